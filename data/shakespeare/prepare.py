"""
Prepare Tiny Shakespeare as GPT-2 BPE tokens (tiktoken's 'gpt2' encoding).

    python data/shakespeare/prepare.py [--input PATH] [--out_dir DIR]

Writes train.bin and val.bin (uint16 token ids; GPT-2's 50257 ids fit) and meta.pkl ({'tokenizer': 'gpt2',
'vocab_size': 50257}) next to this script, or into --out_dir. Without --input it uses input.txt next to this
script if present, else tries to download it. As in the character-level script, the new files replace the old
ones only once they are complete and pass their checks, and an --out_dir that holds a model is refused.
Expected: train 301,966 tokens, val 36,059 tokens.
"""

import importlib.util
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

# reading the input (download, local copy, UTF-8 checks), the checked, all-or-nothing write and the command
# line are the character-level script's; load it by path rather than repeat them
_spec = importlib.util.spec_from_file_location(
    'shakespeare_char_prepare', os.path.join(HERE, '..', 'shakespeare_char', 'prepare.py'))
_char_prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_char_prepare)
read_input = _char_prepare.read_input  # the tests read through it too
check_splits = _char_prepare.check_splits
write_dataset = _char_prepare.write_dataset


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
    _char_prepare.run(argv, __doc__, HERE, prepare, ' (GPT-2 BPE)')


if __name__ == '__main__':
    main()
