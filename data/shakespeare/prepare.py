"""
Prepare Tiny Shakespeare as GPT-2 BPE tokens (tiktoken's 'gpt2' encoding).

    python data/shakespeare/prepare.py [--input PATH] [--out_dir DIR]

Writes train.bin and val.bin (uint16 token ids; GPT-2's 50257 ids fit) and meta.pkl ({'tokenizer': 'gpt2',
'vocab_size': 50257}) next to this script, or into --out_dir. Without --input it uses input.txt next to this
script if present, else tries to download it. As in the character-level script, the new files replace the old
ones only once they are complete and pass their checks, and an --out_dir that holds a model is refused.
Expected: train 301,966 tokens, val 36,059 tokens.
"""

import argparse
import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# reading the input (download, local copy, UTF-8 checks) and the checked, all-or-nothing write are the
# character-level script's; load it by path rather than repeat them
_spec = importlib.util.spec_from_file_location(
    'shakespeare_char_prepare', os.path.join(HERE, '..', 'shakespeare_char', 'prepare.py'))
_char_prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_char_prepare)
read_input = _char_prepare.read_input
check_splits = _char_prepare.check_splits
check_out_dir = _char_prepare.check_out_dir
write_dataset = _char_prepare.write_dataset
shown = _char_prepare.shown
ArgumentParser = _char_prepare.ArgumentParser


def get_gpt2_encoding():
    """tiktoken's GPT-2 encoding, or ValueError saying how to get its files."""
    try:
        import tiktoken
    except ImportError:
        raise ValueError("tiktoken is not installed: pip install tiktoken") from None
    try:
        return tiktoken.get_encoding('gpt2')
    except Exception as e:  # tiktoken fetches its BPE files on first use; offline this fails
        raise ValueError(f"tiktoken could not load the GPT-2 BPE files ({type(e).__name__}: {e}). Without network "
                         "access, point tiktoken at a directory with a local copy of them: "
                         "export TIKTOKEN_CACHE_DIR=PATH/TO/tiktoken_cache") from None


def prepare(text: str, out_dir: str) -> dict:
    """Encode text with GPT-2 BPE, split 90/10 by characters, check, and write train.bin, val.bin and meta.pkl
    into out_dir. Raises ValueError, leaving out_dir as it was, when the text is too short to train on."""
    enc = get_gpt2_encoding()
    n = len(text)
    # encode_ordinary: the text is plain prose, special tokens like <|endoftext|> are not parsed
    splits = {'train': np.array(enc.encode_ordinary(text[:int(n * 0.9)]), dtype=np.uint16),
              'val': np.array(enc.encode_ordinary(text[int(n * 0.9):]), dtype=np.uint16)}
    check_splits(splits, enc.n_vocab, n)
    write_dataset(out_dir, splits, {'tokenizer': 'gpt2', 'vocab_size': enc.n_vocab})
    return {'vocab_size': enc.n_vocab, 'train_tokens': len(splits['train']), 'val_tokens': len(splits['val'])}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', metavar='PATH', default=None,
                        help='a local copy of Tiny Shakespeare input.txt, UTF-8 text (default: input.txt next to '
                             'this script, downloaded when absent)')
    parser.add_argument('--out_dir', metavar='DIR', default=HERE,
                        help='where to write train.bin, val.bin and meta.pkl (default: this script\'s directory)')
    args = parser.parse_args(argv)
    if not args.out_dir.strip():
        parser.error("--out_dir is empty: give the directory to write the dataset into")
    try:
        check_out_dir(args.out_dir)  # before a download, which a wrong --out_dir would waste
        text = read_input(args.input, HERE)
        stats = prepare(text, args.out_dir)
    except ValueError as e:
        sys.exit(f"error: {e} (nothing in {shown(args.out_dir)} was changed)")
    except KeyboardInterrupt:  # Ctrl-C: the writes are all or nothing, and write_dataset removed its temporary files
        print(f"interrupted: {shown(args.out_dir)} was left as it was", file=sys.stderr)
        sys.exit(130)  # 128 + SIGINT, what a shell reports for a command that Ctrl-C stopped
    print(f"length of dataset in characters: {len(text):,}")
    print(f"vocab size: {stats['vocab_size']} (GPT-2 BPE)")
    print(f"train has {stats['train_tokens']:,} tokens")
    print(f"val has {stats['val_tokens']:,} tokens")
    print(f"wrote train.bin, val.bin, meta.pkl to {shown(args.out_dir)}")


if __name__ == '__main__':
    main()
