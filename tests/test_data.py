"""The prepare scripts: exact token counts on Tiny Shakespeare, meta.pkl as the contract says, and bad input
(missing, empty, too short, binary, not UTF-8, a failed write) that stops with one `error:` line and leaves the
dataset already there byte for byte as it was."""

import io
import os
import pickle
import re
import subprocess
import sys

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


# ------------------------------------------------------------------------------------------------------------
# --out_dir: a model's directory, a file, or a path that cannot be made is an error that changes nothing

MODEL_DIRS = {  # what a model's directory holds, and the files the error names (the names alone are refused)
    'hf-export': ({'config.json': b'{"model_type": "gpt2"}', 'model.safetensors': b'weights', 'meta.pkl': b'vocab'},
                  'config.json, model.safetensors'),
    'hf-bin': ({'config.json': b'{"model_type": "gpt2"}', 'pytorch_model.bin': b'weights'},
               'config.json, pytorch_model.bin'),
    'training-out_dir': ({'ckpt.pt': b'checkpoint', 'config.json': b'{"n_layer": 6}', 'meta.pkl': b'vocab',
                          'metrics.jsonl': b'{}\n'}, 'config.json, ckpt.pt'),  # train.py writes its settings there
}


def _run_main(prep, argv) -> str:
    """prep.main(argv), which must stop with one `error:` line; returns that line."""
    with pytest.raises(SystemExit) as e:
        prep.main(argv)
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    return message


@pytest.mark.parametrize('script', SCRIPTS, ids=['char', 'bpe'])
@pytest.mark.parametrize('kind', list(MODEL_DIRS))
def test_prepare_into_a_model_directory_is_refused(script, kind, tmp_path, monkeypatch):
    """Regression: prepare.py into an exported model's directory (or a training out_dir) replaced the model's
    meta.pkl, its vocabulary, with the dataset's."""
    if 'shakespeare/' in script:
        _use_local_tiktoken_files(monkeypatch)
    prep = load_script(script)
    model = tmp_path / 'model'
    model.mkdir()
    files, found = MODEL_DIRS[kind]
    for name, data in files.items():
        (model / name).write_bytes(data)
    (tmp_path / 'good.txt').write_text(GOOD_TEXT, encoding='utf-8')
    message = _run_main(prep, ['--input', str(tmp_path / 'good.txt'), '--out_dir', str(model)])
    assert message == (f"error: --out_dir {model} holds a model ({found}), not a dataset: its meta.pkl would be "
                       f"replaced; prepare into a dataset directory (a new one, or the dataset to replace) "
                       f"(nothing in {model} was changed)")
    with pytest.raises(ValueError, match=r"holds a model"):  # the function, not only the command line
        prep.prepare(GOOD_TEXT, str(model))
    assert _snapshot(model) == files


def test_prepare_replaces_an_existing_dataset(tmp_path):
    """Re-preparing into a dataset directory is how a dataset is replaced: it is not a model's directory."""
    prep = load_script('data/shakespeare_char/prepare.py')
    prep.prepare(GOOD_TEXT, str(tmp_path))
    before = _snapshot(tmp_path)
    prep.prepare(GOOD_TEXT.upper(), str(tmp_path))
    after = _snapshot(tmp_path)
    assert set(after) == set(DATA_FILES) and all(after[n] != before[n] for n in DATA_FILES)


@pytest.mark.parametrize('script', SCRIPTS, ids=['char', 'bpe'])
@pytest.mark.parametrize('where', ['a-file', 'a-file/sub', 'a-file/sub/deeper'])
def test_out_dir_that_is_or_lies_under_a_file(script, where, tmp_path, monkeypatch):
    """Regression: os.makedirs ran outside the error handling, so these ended in a FileExistsError or
    NotADirectoryError traceback."""
    if 'shakespeare/' in script:
        _use_local_tiktoken_files(monkeypatch)
    prep = load_script(script)
    (tmp_path / 'a-file').write_text('keep me')
    (tmp_path / 'good.txt').write_text(GOOD_TEXT, encoding='utf-8')
    out = tmp_path / where
    message = _run_main(prep, ['--input', str(tmp_path / 'good.txt'), '--out_dir', str(out)])
    blocked = '' if where == 'a-file' else f" cannot be created: {tmp_path / 'a-file'}"
    assert message.startswith(f"error: --out_dir {out}{blocked} is a file, not a directory: give a directory "
                              f"for the dataset"), message
    assert (tmp_path / 'a-file').read_text() == 'keep me'


def test_out_dir_that_cannot_be_created_names_the_reason(tmp_path, monkeypatch):
    """A directory the user may not create (permissions, a read-only disk): one line with the reason. Tests run as
    root here, so the refusal is simulated."""
    prep = load_script('data/shakespeare_char/prepare.py')

    def read_only(path, exist_ok=False):
        raise PermissionError(13, 'Permission denied', path)

    monkeypatch.setattr(prep.os, 'makedirs', read_only)
    (tmp_path / 'good.txt').write_text(GOOD_TEXT, encoding='utf-8')
    out = tmp_path / 'new'
    message = _run_main(prep, ['--input', str(tmp_path / 'good.txt'), '--out_dir', str(out)])
    assert message.startswith(f"error: could not create --out_dir {out} (Permission denied)"), message
    assert os.listdir(tmp_path) == ['good.txt']


@pytest.mark.parametrize('script', SCRIPTS, ids=['char', 'bpe'])
def test_bad_option_is_one_line(script, capsys):
    """argparse's own errors (usage, then the error, exit 2) as one `error:` line like the rest."""
    message = _run_main(load_script(script), ['--bogus'])
    assert message == "error: unrecognized arguments: --bogus (--help lists the options)"
    assert capsys.readouterr() == ('', '')


@pytest.mark.parametrize('script', SCRIPTS, ids=['char', 'bpe'])
def test_an_empty_out_dir_is_one_line(script):
    """Regression: --out_dir "" ended in os.path.relpath's ValueError traceback inside the error handler."""
    message = _run_main(load_script(script), ['--out_dir', ''])
    assert message == "error: --out_dir is empty: give the directory to write the dataset into (--help lists the options)"


# ------------------------------------------------------------------------------------------------------------
# Ctrl-C: one line, exit status 130, and the old dataset as it was

@pytest.mark.parametrize('script', SCRIPTS, ids=['char', 'bpe'])
def test_ctrl_c_while_writing_keeps_the_old_dataset(script, tmp_path, monkeypatch, capsys):
    """Regression: Ctrl-C printed a KeyboardInterrupt traceback. It arrives here while the new files are written
    (the first is written in full, the second not): the old dataset stays and no temporary file is left."""
    if 'shakespeare/' in script:
        _use_local_tiktoken_files(monkeypatch)
    prep = load_script(script)
    out = tmp_path / 'dataset'
    (tmp_path / 'good.txt').write_text(GOOD_TEXT, encoding='utf-8')
    prep.main(['--input', str(tmp_path / 'good.txt'), '--out_dir', str(out)])
    before = _snapshot(out)
    capsys.readouterr()
    calls = []

    def ctrl_c(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prep.os, 'fsync', ctrl_c)
    (tmp_path / 'other.txt').write_text(GOOD_TEXT.upper(), encoding='utf-8')  # every file would change
    try:
        prep.main(['--input', str(tmp_path / 'other.txt'), '--out_dir', str(out)])
    except KeyboardInterrupt:  # caught here: escaping, it would stop the whole pytest run
        pytest.fail("KeyboardInterrupt escaped main: the user sees a traceback")
    except SystemExit as e:
        assert e.code == 130 and len(calls) == 2
    else:
        pytest.fail("main went on after Ctrl-C")
    assert capsys.readouterr() == ('', f"interrupted: {out} was left as it was\n")
    assert _snapshot(out) == before  # byte for byte, and no temporary files


# runs data/shakespeare_char/prepare.py's main in a fresh Python, with `hook` (code defining fsync or replace to
# put in place of os's) run first: a real SIGINT, the real exit status and stderr, and pytest's own handler untouched
SIGNAL_RUN = """
import importlib.util, os, signal, sys
# Python's Ctrl-C handler, as a run from a terminal has it: a child of a shell's background job starts with SIGINT
# ignored, and Python then installs none
signal.signal(signal.SIGINT, signal.default_int_handler)
spec = importlib.util.spec_from_file_location('prep', {script!r})
prep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prep)
real_fsync, real_replace, calls = os.fsync, os.replace, []
{hook}
try:
    prep.main(sys.argv[1:])
finally:
    print('handler restored:', signal.getsignal(signal.SIGINT) is signal.default_int_handler)
"""
SIGINT_AT_SECOND_FSYNC = """
def fsync(fd):
    calls.append(fd)
    real_fsync(fd)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in a terminal sends
os.fsync = fsync
"""
SIGINT_AT_FIRST_RENAME = """
def replace(src, dst):
    calls.append(src)
    real_replace(src, dst)
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGINT)
os.replace = replace
"""


def _run_with_signal(hook: str, *argv) -> subprocess.CompletedProcess:
    code = SIGNAL_RUN.format(script=str(ROOT / 'data/shakespeare_char/prepare.py'), hook=hook)
    return subprocess.run([sys.executable, '-c', code, *argv], capture_output=True, text=True, timeout=60)


def test_sigint_exits_130_with_one_line(tmp_path):
    """A real SIGINT while the files are written: exit status 130, one line on stderr, the old dataset as it was."""
    prep = load_script('data/shakespeare_char/prepare.py')
    out = tmp_path / 'dataset'
    prep.prepare(GOOD_TEXT, str(out))
    before = _snapshot(out)
    (tmp_path / 'other.txt').write_text(GOOD_TEXT.upper(), encoding='utf-8')
    r = _run_with_signal(SIGINT_AT_SECOND_FSYNC, '--input', str(tmp_path / 'other.txt'), '--out_dir', str(out))
    assert r.returncode == 130, r.stderr
    assert r.stderr == f"interrupted: {out} was left as it was\n"
    assert _snapshot(out) == before


def test_sigint_during_the_renames_is_held_off(tmp_path):
    """Ctrl-C between the three renames would leave new token files beside the old meta.pkl: it is ignored until
    they are done, the new dataset is whole, and Python's handler is back afterwards."""
    prep = load_script('data/shakespeare_char/prepare.py')
    out, want = tmp_path / 'dataset', tmp_path / 'want'
    prep.prepare(GOOD_TEXT, str(out))
    prep.prepare(GOOD_TEXT.upper(), str(want))
    (tmp_path / 'other.txt').write_text(GOOD_TEXT.upper(), encoding='utf-8')
    r = _run_with_signal(SIGINT_AT_FIRST_RENAME, '--input', str(tmp_path / 'other.txt'), '--out_dir', str(out))
    assert r.returncode == 0 and r.stderr == '', r.stderr
    assert 'handler restored: True' in r.stdout
    assert _snapshot(out) == _snapshot(want)


def test_an_interrupted_download_leaves_no_input_txt(tmp_path, monkeypatch):
    """The downloaded text is saved through a temporary file: stopped midway, no truncated input.txt is left for
    the next run to take for the whole text."""
    prep = load_script('data/shakespeare_char/prepare.py')
    monkeypatch.setattr(prep.urllib.request, 'urlopen', lambda url, timeout: io.BytesIO(GOOD_TEXT.encode()))
    real_replace = prep.os.replace

    def ctrl_c(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep.os, 'replace', ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        prep.read_input(None, str(tmp_path))
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(prep.os, 'replace', real_replace)
    assert prep.read_input(None, str(tmp_path)) == GOOD_TEXT
    assert os.listdir(tmp_path) == ['input.txt']
