"""
Prepare Tiny Shakespeare for character-level language modeling: every distinct character is a token.

    python data/shakespeare_char/prepare.py [--input PATH] [--out_dir DIR]

Writes train.bin and val.bin (uint16 token ids) and meta.pkl ({'tokenizer': 'char', 'vocab_size', 'stoi',
'itos'}) next to this script, or into --out_dir. Without --input it uses input.txt next to this script if present,
else tries to download it. The new files replace the old ones only once they are complete and pass their checks:
an empty, too short, binary or non-UTF-8 input stops with an error and leaves the dataset as it was, and so does
Ctrl-C. An --out_dir that holds a model (config.json, model.safetensors, pytorch_model.bin or ckpt.pt) is refused:
its meta.pkl is the model's vocabulary.
Expected: vocab 65, train 1,003,854 tokens, val 111,540 tokens.
"""

import argparse
import os
import pickle
import signal
import sys
import threading
import urllib.request

import numpy as np

DATA_URL = 'https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt'
HERE = os.path.dirname(os.path.abspath(__file__))
# Training draws windows of block_size + 1 tokens from each split (block_size inputs, shifted by one for the
# targets), so a split needs at least that many. 257 is what the configs of both Tiny Shakespeare datasets need
# (block_size = 256 in config/train_shakespeare_char.py and config/train_shakespeare.py); train.py checks the
# block_size of the run itself when it starts.
MIN_SPLIT_TOKENS = 257
# a model's files: a Hugging Face export (hf_gpt2.py) or a training out_dir. Its meta.pkl is the model's vocabulary,
# which a dataset's meta.pkl must never replace
MODEL_FILES = ('config.json', 'model.safetensors', 'pytorch_model.bin', 'ckpt.pt')


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with its errors as one `error:` line, like every other script here, instead of the usage
    followed by the error."""

    def error(self, message: str):
        sys.exit(f"error: {message} (--help lists the options)")


def shown(path: str) -> str:
    """path as a user would type it: relative to the working directory when inside it, else absolute."""
    rel = os.path.relpath(path)
    return os.path.abspath(path) if rel.startswith('..') else rel


def decode_text(raw: bytes, source: str) -> str:
    """raw as UTF-8 text, or ValueError saying why it is not text (binary, or another encoding such as latin-1)."""
    if b'\0' in raw:
        raise ValueError(f"{source} is binary (it holds NUL bytes), not text: give the plain-text input.txt")
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        raise ValueError(f"{source} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start} is not valid "
                         f"UTF-8; latin-1 and other encodings are not read): convert it to UTF-8, e.g. "
                         f"iconv -f latin1 -t utf-8") from None


def read_input(input_path: str | None, here: str = HERE) -> str:
    """The raw text: from input_path, else input.txt in `here`, else downloaded into `here`.
    Raises ValueError saying what to do when none of these gives UTF-8 text."""
    if input_path is not None:
        if not os.path.isfile(input_path):
            raise ValueError(f"--input {input_path!r} does not exist (or is not a file)")
        with open(input_path, 'rb') as f:
            return decode_text(f.read(), input_path)
    local = os.path.join(here, 'input.txt')
    if not os.path.isfile(local):
        print(f"downloading Tiny Shakespeare from {DATA_URL}")
        try:
            with urllib.request.urlopen(DATA_URL, timeout=10) as r:
                raw = r.read()
        except Exception as e:  # no network, DNS failure, timeout, HTTP error: all mean the same to the user
            script = os.path.relpath(os.path.join(here, 'prepare.py'))
            raise ValueError(f"could not download Tiny Shakespeare ({e}). Point the script at a local copy of "
                             f"input.txt: python {script} --input PATH/TO/input.txt, or place the file at "
                             f"{os.path.relpath(local)} and run the script again") from None
        text = decode_text(raw, DATA_URL)
        # through a temporary file: a run interrupted mid-write must not leave a truncated input.txt that the next
        # run would take for the whole text
        tmp = f'{local}.{os.getpid()}.tmp'
        try:
            with open(tmp, 'w', encoding='utf-8') as f:
                f.write(text)
            os.replace(tmp, local)
        except OSError as e:
            raise ValueError(f"could not save the download as {local} ({e.strerror or e}): download input.txt "
                             f"yourself and pass --input PATH/TO/input.txt") from e
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    with open(local, 'rb') as f:
        return decode_text(f.read(), local)


def check_splits(splits: dict[str, np.ndarray], vocab_size: int, chars: int) -> None:
    """ValueError unless every split is long enough to train on and its ids fit the vocabulary."""
    if chars == 0:
        raise ValueError("the input is empty: give the whole input.txt")
    short = {name: len(ids) for name, ids in splits.items() if len(ids) < MIN_SPLIT_TOKENS}
    if short:
        counts = ', '.join(f"{name} {n:,}" for name, n in short.items())
        raise ValueError(f"the input is too short: {chars:,} characters give {counts} tokens, and training needs "
                         f"at least {MIN_SPLIT_TOKENS} tokens in each split (it draws windows of block_size + 1 "
                         f"tokens; the val split is the last 10% of the text). Give the whole input.txt")
    for name, ids in splits.items():
        if len(ids) and int(ids.max()) >= vocab_size:  # a bug here, not a user error; cheap to rule out
            raise ValueError(f"{name} holds token id {int(ids.max())}, outside the vocabulary of {vocab_size}")


def check_out_dir(out_dir: str) -> None:
    """ValueError unless out_dir can hold a dataset: a directory (or a path to create) that holds no model."""
    there = os.path.abspath(out_dir)
    while not os.path.exists(there):  # the part of the path that exists: out_dir itself, or the parent to create it in
        there = os.path.dirname(there)
    if not os.path.isdir(there):
        where = '' if there == os.path.abspath(out_dir) else f" cannot be created: {there}"
        raise ValueError(f"--out_dir {out_dir}{where} is a file, not a directory: give a directory for the dataset")
    found = [n for n in MODEL_FILES if os.path.exists(os.path.join(out_dir, n))]
    if found:
        raise ValueError(f"--out_dir {out_dir} holds a model ({', '.join(found)}), not a dataset: its meta.pkl "
                         f"would be replaced; prepare into a dataset directory (a new one, or the dataset to replace)")


def write_dataset(out_dir: str, splits: dict[str, np.ndarray], meta: dict) -> None:
    """Write <split>.bin for each split and meta.pkl into out_dir, each through a temporary file in out_dir that
    is renamed over the old one only after all of them are written in full. Until then, and if writing fails
    (e.g. a full disk) or Ctrl-C stops it, the old files stay as they were and the temporary files are removed.
    The renames are three steps, not one: a crash in the microseconds between them could pair new token files with
    the old meta.pkl, which train.py refuses; Ctrl-C is held off while they run (replace_all)."""
    check_out_dir(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"could not create --out_dir {out_dir} ({e.strerror or e})") from e
    payloads = {f'{name}.bin': ids.tobytes() for name, ids in splits.items()}
    payloads['meta.pkl'] = pickle.dumps(meta)
    tmp_paths = {}
    try:
        for name, payload in payloads.items():
            tmp_paths[name] = os.path.join(out_dir, f'.{name}.{os.getpid()}.tmp')  # the pid: two runs never share one
            with open(tmp_paths[name], 'wb') as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
        replace_all({tmp: os.path.join(out_dir, name) for name, tmp in tmp_paths.items()})
    except OSError as e:
        raise ValueError(f"could not write the dataset into {out_dir} ({e.strerror or e})") from e
    finally:
        for tmp in tmp_paths.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def replace_all(renames: dict[str, str]) -> None:
    """os.replace each source over its destination, with Ctrl-C ignored until all are done: stopped halfway, the
    dataset would be half new. Only the main thread can set a signal handler; elsewhere Ctrl-C never arrives."""
    hold = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if hold else None
    try:
        for src, dst in renames.items():
            os.replace(src, dst)
    finally:
        if hold:  # None: a handler set outside Python, which cannot be put back; Python's default then
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def prepare(text: str, out_dir: str) -> dict:
    """Encode text by character, split 90/10, check, and write train.bin, val.bin and meta.pkl into out_dir.
    Raises ValueError, leaving out_dir as it was, when the text is too short to train on."""
    chars = sorted(set(text))
    vocab_size = len(chars)
    if vocab_size > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"the input has {vocab_size:,} distinct characters; token ids are stored as uint16, "
                         f"which holds 65,536")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(text)
    splits = {'train': np.array([stoi[c] for c in text[:int(n * 0.9)]], dtype=np.uint16),
              'val': np.array([stoi[c] for c in text[int(n * 0.9):]], dtype=np.uint16)}
    check_splits(splits, vocab_size, n)
    write_dataset(out_dir, splits, {'tokenizer': 'char', 'vocab_size': vocab_size, 'itos': itos, 'stoi': stoi})
    return {'vocab_size': vocab_size, 'train_tokens': len(splits['train']), 'val_tokens': len(splits['val'])}


def run(argv: list[str] | None, doc: str, here: str, prepare_fn, tokens: str = '') -> None:
    """The command line of a prepare script (this one's, and the GPT-2 BPE one's): read the input, prepare_fn(text,
    out_dir), print what was written; every failure one `error:` line that leaves out_dir as it was. tokens names
    the tokenizer after the vocabulary size."""
    parser = ArgumentParser(description=doc.strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--input', metavar='PATH', default=None,
                        help='a local copy of Tiny Shakespeare input.txt, UTF-8 text (default: input.txt next to '
                             'this script, downloaded when absent)')
    parser.add_argument('--out_dir', metavar='DIR', default=here,
                        help='where to write train.bin, val.bin and meta.pkl (default: this script\'s directory)')
    args = parser.parse_args(argv)
    if not args.out_dir.strip():
        parser.error("--out_dir is empty: give the directory to write the dataset into")
    try:
        check_out_dir(args.out_dir)  # before a download, which a wrong --out_dir would waste
        text = read_input(args.input, here)
        stats = prepare_fn(text, args.out_dir)
    except ValueError as e:
        sys.exit(f"error: {e} (nothing in {shown(args.out_dir)} was changed)")
    except KeyboardInterrupt:  # Ctrl-C: the writes are all or nothing, and write_dataset removed its temporary files
        print(f"interrupted: {shown(args.out_dir)} was left as it was", file=sys.stderr)
        sys.exit(130)  # 128 + SIGINT, what a shell reports for a command that Ctrl-C stopped
    print(f"length of dataset in characters: {len(text):,}")
    print(f"vocab size: {stats['vocab_size']}{tokens}")
    print(f"train has {stats['train_tokens']:,} tokens")
    print(f"val has {stats['val_tokens']:,} tokens")
    print(f"wrote train.bin, val.bin, meta.pkl to {shown(args.out_dir)}")


def main(argv: list[str] | None = None) -> None:
    run(argv, __doc__, HERE, prepare)


if __name__ == '__main__':
    main()
