"""The prepare scripts: exact token counts on Tiny Shakespeare, meta.pkl as the contract says, and bad input
(missing, empty, too short, binary, not UTF-8, a failed write) that stops with one `error:` line and leaves the
dataset already there byte for byte as it was."""

import os
import pickle
import re

import numpy as np
import pytest

from helpers import ROOT, SHAKESPEARE, TIKTOKEN_CACHE, load_script, requires_shared

# the reference implementation's figures
CHAR_COUNTS = {'vocab_size': 65, 'train_tokens': 1_003_854, 'val_tokens': 111_540}
BPE_COUNTS = {'train_tokens': 301_966, 'val_tokens': 36_059}
DATA_FILES = ('train.bin', 'val.bin', 'meta.pkl')


def _use_local_tiktoken_files(monkeypatch):
    if 'TIKTOKEN_CACHE_DIR' not in os.environ:
        monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))  # offline: tiktoken reads a local copy
    import tiktoken
    try:
        tiktoken.get_encoding('gpt2')
    except Exception as e:  # no network and no local copy of GPT-2's BPE files
        pytest.skip(f"the GPT-2 BPE files cannot be loaded here ({type(e).__name__})")


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
    assert meta['tokenizer'] == 'char' and meta['vocab_size'] == 65 and len(meta['stoi']) == 65
    # the encoding round-trips
    assert ''.join(meta['itos'][int(i)] for i in train[:200]) == text[:200]
    assert ''.join(meta['itos'][int(i)] for i in val[-200:]) == text[-200:]
    assert sorted(os.listdir(tmp_path)) == sorted(DATA_FILES)  # no temporary file left behind


@requires_shared
def test_bpe_prepare_counts(tmp_path, monkeypatch):
    _use_local_tiktoken_files(monkeypatch)
    prep = load_script('data/shakespeare/prepare.py')
    stats = prep.prepare(prep.read_input(str(SHAKESPEARE)), str(tmp_path))
    assert stats['vocab_size'] == 50257
    assert {k: stats[k] for k in BPE_COUNTS} == BPE_COUNTS
    assert os.path.getsize(tmp_path / 'train.bin') == 2 * BPE_COUNTS['train_tokens']
    with open(tmp_path / 'meta.pkl', 'rb') as f:
        assert pickle.load(f) == {'tokenizer': 'gpt2', 'vocab_size': 50257}


def test_no_input_and_no_network_says_what_to_do(tmp_path, monkeypatch):
    prep = load_script('data/shakespeare_char/prepare.py')

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(prep.urllib.request, 'urlopen', offline)
    with pytest.raises(ValueError, match=r"could not download.*network is unreachable.*--input PATH/TO/input\.txt"):
        prep.read_input(None, str(tmp_path))
    assert not (tmp_path / 'input.txt').exists()


def test_missing_input_file_is_named(tmp_path):
    prep = load_script('data/shakespeare_char/prepare.py')
    with pytest.raises(SystemExit, match=r"^error: --input '.*nope\.txt' does not exist"):
        prep.main(['--input', str(tmp_path / 'nope.txt'), '--out_dir', str(tmp_path / 'out')])
    assert not (tmp_path / 'out').exists()


def test_bpe_without_tiktoken_files_says_to_set_cache_dir(tmp_path, monkeypatch):
    prep = load_script('data/shakespeare/prepare.py')
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    with pytest.raises(ValueError, match='TIKTOKEN_CACHE_DIR'):
        prep.prepare('some text', str(tmp_path))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------
# bad input leaves the dataset that is already there untouched

GOOD_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 300  # 2,000+ val tokens as BPE
MIN_CHARS = 2561  # the fewest characters whose val split (n - int(0.9 n)) holds MIN_SPLIT_TOKENS = 257 characters
BAD_INPUTS = {  # name: (file bytes, the error it must give)
    'empty': (b'', r"the input is empty"),
    'too short': (GOOD_TEXT[:MIN_CHARS - 1].encode(), r"the input is too short: 2,560 characters give val \d+ "
                                                         r"tokens.*at least 257 tokens in each split"),
    'latin-1': ("Ô Roméo, où es-tu ?\n".encode('latin-1') * 200, r"is not UTF-8 text \(byte 0xd4 at offset 0"),
    'binary': (bytes(range(256)) * 20, r"is binary \(it holds NUL bytes\)"),
}
SCRIPTS = ['data/shakespeare_char/prepare.py', 'data/shakespeare/prepare.py']


def _snapshot(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize('script', SCRIPTS, ids=['char', 'bpe'])
@pytest.mark.parametrize('bad', list(BAD_INPUTS), ids=lambda s: s.replace(' ', '_'))
def test_bad_input_is_an_error_and_keeps_the_old_dataset(script, bad, tmp_path, monkeypatch, capsys):
    if 'shakespeare/' in script:
        _use_local_tiktoken_files(monkeypatch)
    prep = load_script(script)
    out = tmp_path / 'dataset'
    good = tmp_path / 'good.txt'
    good.write_text(GOOD_TEXT, encoding='utf-8')
    prep.main(['--input', str(good), '--out_dir', str(out)])
    before = _snapshot(out)
    assert set(before) == set(DATA_FILES)

    raw, expected = BAD_INPUTS[bad]
    (tmp_path / 'bad.txt').write_bytes(raw)
    with pytest.raises(SystemExit) as e:
        prep.main(['--input', str(tmp_path / 'bad.txt'), '--out_dir', str(out)])
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    assert re.search(expected, message), message
    assert message.endswith(f"(nothing in {out} was changed)")
    assert _snapshot(out) == before  # byte for byte, and no temporary files


def test_the_shortest_input_that_can_train_is_accepted(tmp_path):
    prep = load_script('data/shakespeare_char/prepare.py')
    stats = prep.prepare(GOOD_TEXT[:MIN_CHARS], str(tmp_path))
    assert stats['val_tokens'] == prep.MIN_SPLIT_TOKENS == 257
    with pytest.raises(ValueError, match=r"2,560 characters give val 256 tokens"):  # one character fewer
        prep.prepare(GOOD_TEXT[:MIN_CHARS - 1], str(tmp_path / 'shorter'))


def test_a_failed_write_keeps_the_old_dataset(tmp_path, monkeypatch):
    """A full disk (or any OSError) while the new files are written: an error, and the old files as they were."""
    prep = load_script('data/shakespeare_char/prepare.py')
    prep.prepare(GOOD_TEXT, str(tmp_path))
    before = _snapshot(tmp_path)
    calls = []

    def full_disk(fd):
        calls.append(fd)
        if len(calls) == 2:  # the first file is written in full, the second fails
            raise OSError(28, 'No space left on device')

    monkeypatch.setattr(prep.os, 'fsync', full_disk)
    with pytest.raises(ValueError, match=r"could not write the dataset into .*No space left on device"):
        prep.prepare(GOOD_TEXT.upper(), str(tmp_path))  # another text: every file would change
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize('config', ['train_shakespeare_char.py', 'train_shakespeare.py'])
def test_the_minimum_is_what_the_datasets_configs_need(config):
    """MIN_SPLIT_TOKENS is block_size + 1 of the configs that train on these datasets: keep them in step."""
    from train import TrainConfig
    from utils import parse_config
    prep = load_script('data/shakespeare_char/prepare.py')
    assert parse_config([str(ROOT / 'config' / config)], TrainConfig).block_size + 1 == prep.MIN_SPLIT_TOKENS
