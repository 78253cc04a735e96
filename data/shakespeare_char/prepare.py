"""
Prepare Tiny Shakespeare for character-level language modeling: every distinct character is a token.

    python data/shakespeare_char/prepare.py [--input PATH]

Writes train.bin and val.bin (uint16 token ids) and meta.pkl (vocab_size, stoi, itos) next to this script.
Without --input it uses input.txt next to this script if present, else tries to download it.
Expected: vocab 65, train 1,003,854 tokens, val 111,540 tokens.
"""

import argparse
import os
import pickle
import sys
import urllib.request

import numpy as np

DATA_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))


def read_input(input_path: str | None, here: str = HERE) -> str:
    """The raw text: from input_path, else input.txt in `here`, else downloaded into `here`.
    Exits with what to do when none of these works."""
    if input_path is not None:
        if not os.path.isfile(input_path):
            sys.exit(f"error: --input {input_path!r} does not exist")
        with open(input_path, 'r', encoding='utf-8') as f:
            return f.read()
    local = os.path.join(here, 'input.txt')
    if not os.path.isfile(local):
        print(f"downloading Tiny Shakespeare from {DATA_URL}")
        try:
            with urllib.request.urlopen(DATA_URL, timeout=10) as r:
                text = r.read().decode('utf-8')
        except Exception as e:  # no network, DNS failure, timeout, HTTP error: all mean the same to the user
            rel = os.path.relpath(local)
            sys.exit(f"error: could not download Tiny Shakespeare ({e}).\n"
                     f"Point the script at a local copy, e.g.\n"
                     f"    python {os.path.relpath(os.path.join(here, 'prepare.py'))} --input ../shared/data/tinyshakespeare/input.txt\n"
                     f"or place the file at {rel} and run the script again.")
        with open(local, 'w', encoding='utf-8') as f:
            f.write(text)
    with open(local, 'r', encoding='utf-8') as f:
        return f.read()


def prepare(text: str, out_dir: str) -> dict:
    """Encode text by character, split 90/10, write train.bin, val.bin and meta.pkl into out_dir."""
    chars = sorted(set(text))
    vocab_size = len(chars)
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    train_ids = np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16)
    os.makedirs(out_dir, exist_ok=True)
    train_ids.tofile(os.path.join(out_dir, 'train.bin'))
    val_ids.tofile(os.path.join(out_dir, 'val.bin'))
    with open(os.path.join(out_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': vocab_size, 'itos': itos, 'stoi': stoi}, f)
    return {'vocab_size': vocab_size, 'train_tokens': len(train_ids), 'val_tokens': len(val_ids)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--input', default=None, help='path to a local copy of Tiny Shakespeare input.txt')
    args = parser.parse_args(argv)
    text = read_input(args.input)
    stats = prepare(text, HERE)
    print(f"length of dataset in characters: {len(text):,}")
    print(f"vocab size: {stats['vocab_size']}")
    print(f"train has {stats['train_tokens']:,} tokens")
    print(f"val has {stats['val_tokens']:,} tokens")
    print(f"wrote train.bin, val.bin, meta.pkl to {os.path.relpath(HERE)}")


if __name__ == '__main__':
    main()
