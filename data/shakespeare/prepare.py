"""
Prepare Tiny Shakespeare as GPT-2 BPE tokens (tiktoken's 'gpt2' encoding).

    python data/shakespeare/prepare.py [--input PATH]

Writes train.bin and val.bin (uint16 token ids; GPT-2's 50257 ids fit) next to this script. No meta.pkl:
its absence is what tells train.py and sample.py that the dataset is GPT-2 BPE.
Without --input it uses input.txt next to this script if present, else tries to download it.
Expected: train 301,966 tokens, val 36,059 tokens.
"""

import argparse
import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# the download and local-copy logic is the character-level script's; load it by path rather than repeat it
_spec = importlib.util.spec_from_file_location(
    'shakespeare_char_prepare', os.path.join(HERE, '..', 'shakespeare_char', 'prepare.py'))
_char_prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_char_prepare)
read_input = _char_prepare.read_input


def get_gpt2_encoding():
    try:
        import tiktoken
    except ImportError:
        sys.exit("error: tiktoken is not installed: pip install tiktoken")
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # tiktoken fetches its BPE files on first use; offline this fails
        sys.exit(f"error: tiktoken could not load the GPT-2 BPE files ({type(e).__name__}: {e}).\n"
                 "Without network access, point tiktoken at a local cache of them, e.g.\n"
                 "    export TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache")


def prepare(text: str, out_dir: str) -> dict:
    """Encode text with GPT-2 BPE, split 90/10 by characters, write train.bin and val.bin into out_dir."""
    enc = get_gpt2_encoding()
    n = len(text)
    # encode_ordinary: the text is plain prose, special tokens like <|endoftext|> are not parsed
    train_ids = np.array(enc.encode_ordinary(text[:int(n * 0.9)]), dtype=np.uint16)
    val_ids = np.array(enc.encode_ordinary(text[int(n * 0.9):]), dtype=np.uint16)
    os.makedirs(out_dir, exist_ok=True)
    train_ids.tofile(os.path.join(out_dir, 'train.bin'))
    val_ids.tofile(os.path.join(out_dir, 'val.bin'))
    return {'vocab_size': enc.n_vocab, 'train_tokens': len(train_ids), 'val_tokens': len(val_ids)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--input', default=None, help='path to a local copy of Tiny Shakespeare input.txt')
    args = parser.parse_args(argv)
    text = read_input(args.input, HERE)
    stats = prepare(text, HERE)
    print(f"length of dataset in characters: {len(text):,}")
    print(f"vocab size: {stats['vocab_size']} (GPT-2 BPE)")
    print(f"train has {stats['train_tokens']:,} tokens")
    print(f"val has {stats['val_tokens']:,} tokens")
    print(f"wrote train.bin, val.bin to {os.path.relpath(HERE)}")


if __name__ == '__main__':
    main()
