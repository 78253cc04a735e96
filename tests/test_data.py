"""The prepare scripts: exact token counts on Tiny Shakespeare, and what they say when there is no input."""

import os
import pickle

import numpy as np
import pytest

from helpers import SHAKESPEARE, TIKTOKEN_CACHE, load_script, requires_shared

# the reference implementation's figures (../shared/README.md)
CHAR_COUNTS = {'vocab_size': 65, 'train_tokens': 1_003_854, 'val_tokens': 111_540}
BPE_COUNTS = {'train_tokens': 301_966, 'val_tokens': 36_059}


@requires_shared
def test_char_prepare_counts(tmp_path):
    prep = load_script('data/shakespeare_char/prepare.py')
    text = prep.read_input(str(SHAKESPEARE))
    stats = prep.prepare(text, str(tmp_path))
    assert stats == CHAR_COUNTS
    train = np.fromfile(tmp_path / 'train.bin', dtype=np.uint16)
    val = np.fromfile(tmp_path / 'val.bin', dtype=np.uint16)
    assert (len(train), len(val)) == (CHAR_COUNTS['train_tokens'], CHAR_COUNTS['val_tokens'])
    with open(tmp_path / 'meta.pkl', 'rb') as f:
        meta = pickle.load(f)
    assert meta['vocab_size'] == 65
    # the encoding round-trips
    assert ''.join(meta['itos'][int(i)] for i in train[:200]) == text[:200]
    assert ''.join(meta['itos'][int(i)] for i in val[-200:]) == text[-200:]


@requires_shared
def test_bpe_prepare_counts(tmp_path, monkeypatch):
    if 'TIKTOKEN_CACHE_DIR' not in os.environ:
        monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))  # offline: tiktoken reads the shared copy
    prep = load_script('data/shakespeare/prepare.py')
    stats = prep.prepare(prep.read_input(str(SHAKESPEARE)), str(tmp_path))
    assert stats['vocab_size'] == 50257
    assert {k: stats[k] for k in BPE_COUNTS} == BPE_COUNTS
    assert os.path.getsize(tmp_path / 'train.bin') == 2 * BPE_COUNTS['train_tokens']
    assert not (tmp_path / 'meta.pkl').exists()  # its absence is what marks a dataset as GPT-2 BPE


def test_no_input_and_no_network_says_what_to_do(tmp_path, monkeypatch):
    prep = load_script('data/shakespeare_char/prepare.py')

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(prep.urllib.request, 'urlopen', offline)
    with pytest.raises(SystemExit) as e:
        prep.read_input(None, str(tmp_path))
    msg = str(e.value)
    assert '--input ../shared/data/tinyshakespeare/input.txt' in msg and 'input.txt' in msg
    assert not (tmp_path / 'input.txt').exists()


def test_missing_input_file_is_named(tmp_path):
    prep = load_script('data/shakespeare_char/prepare.py')
    with pytest.raises(SystemExit, match='nope.txt'):
        prep.read_input(str(tmp_path / 'nope.txt'))


def test_bpe_without_tiktoken_files_says_to_set_cache_dir(tmp_path, monkeypatch):
    prep = load_script('data/shakespeare/prepare.py')
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    with pytest.raises(SystemExit, match='TIKTOKEN_CACHE_DIR'):
        prep.prepare('some text', str(tmp_path))
