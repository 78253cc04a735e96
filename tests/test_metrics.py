"""What a run reports: the effective config, progress lines (iter i/N, elapsed, time left), out_dir/metrics.jsonl
(appended on resume) and W&B, with the real wandb package in offline mode."""

import dataclasses
import json
import re
import struct

import numpy as np
import pytest

from helpers import ROOT, char_data, tiny_config  # noqa: F401 (fixture)
from train import TrainConfig, progress_line, train
from utils import ConfigError, prepare_hint

PROGRESS = re.compile(r"iter (\d+)/(\d+): loss \d+\.\d{4}, lr \S+, \d+\.\d\d ms/iter, [\d,]+ tok/s, "
                      r"elapsed \d+:\d\d:\d\d, left \d+:\d\d:\d\d$")


def read_metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / 'metrics.jsonl').read_text().splitlines()]


def test_config_progress_and_metrics_file(char_data, tmp_path, capsys):
    cfg = tiny_config(tmp_path, char_data, max_iters=10, eval_interval=5, log_interval=2)
    result = train(cfg)
    out = capsys.readouterr().out

    # the effective config, compactly at the start, and in full in out_dir
    assert out.startswith('config: out_dir=') and ' n_layer=2 ' in out.split('\ndevice')[0]
    assert json.loads((tmp_path / 'config.json').read_text()) == dataclasses.asdict(cfg)
    # a progress line per log step: where it is, of how many, how long so far and to go
    progress = [PROGRESS.match(line) for line in out.splitlines() if line.startswith('iter ')]
    assert all(progress) and [(int(m[1]), int(m[2])) for m in progress] == [(i, 10) for i in (0, 2, 4, 6, 8)]

    rows = read_metrics(tmp_path)
    assert [r['iter'] for r in rows] == [0, 2, 4, 5, 6, 8, 10]  # every log step and every eval, once
    evals = [(r['iter'], r['train/loss'], r['val/loss']) for r in rows if 'val/loss' in r]
    assert evals == result['losses']
    logs = [r for r in rows if 'train/step_loss' in r]
    assert [r['iter'] for r in logs] == [0, 2, 4, 6, 8]
    for r in logs:
        assert r['tokens_per_sec'] == pytest.approx(result['tokens_per_iter'] / (r['ms_per_iter'] / 1000))
        assert r['mfu'] is None and r['grad_norm'] > 0 and r['eta_s'] >= 0  # no MFU on the CPU
    assert all(np.diff([r['elapsed_s'] for r in rows]) >= 0)
    # the summary's timings are the logged windows but the first (it holds the warm-up), its median their median
    assert result['timings'] == [(r['iter'], r['ms_per_iter']) for r in logs[1:]]
    assert result['ms_per_iter'] == np.median([r['ms_per_iter'] for r in logs[1:]])


def test_metrics_file_continues_on_resume(char_data, tmp_path):
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    first = read_metrics(tmp_path)
    train(tiny_config(tmp_path, char_data, max_iters=6, eval_interval=4, init_from='resume'))
    rows = read_metrics(tmp_path)
    assert [r['iter'] for r in first] == [0, 1, 2, 3, 4]
    # the checkpoint's history up to its iteration, 4, then the resumed run's eval at 4 (in place of the first
    # run's, which it repeats), steps 4 and 5, eval 6: one row per iteration
    assert rows[:4] == first[:4]
    assert [r['iter'] for r in rows[4:]] == [4, 5, 6] and 'train/step_loss' in rows[4]


def test_progress_line_for_an_absurdly_long_run():
    """Regression: max_iters=1e16 stopped the run at its first progress line: the time left overflowed timedelta."""
    row = {'train/step_loss': 4.2, 'lr': 1e-3, 'ms_per_iter': 10.0, 'tokens_per_sec': 1e5, 'mfu': None,
           'elapsed_s': 1.0, 'eta_s': 1e14}
    assert progress_line(0, 10**16, row).endswith('elapsed 0:00:01, left 1.16e+09 days')
    assert progress_line(0, 10, {**row, 'eta_s': 3725.0}).endswith('left 1:02:05')


def test_defaults_train_a_dataset_that_can_be_prepared():
    """Regression: with no config, train.py wanted dataset='openwebtext' and named a prepare.py that did not exist."""
    dataset = TrainConfig().dataset
    assert (ROOT / 'data' / dataset / 'prepare.py').is_file()
    assert re.search(rf"python \S*data/{dataset}/prepare\.py", prepare_hint(str(ROOT / 'data' / dataset)))
    assert "--dataset=shakespeare | shakespeare_char" in prepare_hint(str(ROOT / 'data' / 'openwebtext'))


# ----------------------------------------------------------------------------------------------------------
# W&B, the real package

wandb = pytest.importorskip('wandb')


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """wandb writing only under tmp_path, never reaching the network, never reading a real login."""
    for name in ('WANDB_DIR', 'WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
        monkeypatch.setenv(name, str(tmp_path / 'wandb_files'))
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_CONSOLE', 'off')  # leave stdout to pytest
    monkeypatch.setenv('WANDB_SILENT', 'true')
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.setenv('NETRC', str(tmp_path / 'no_netrc'))
    (tmp_path / 'wandb_files').mkdir()
    wandb.teardown()  # wandb keeps the settings of its first run in a process: start from the environment above
    yield tmp_path / 'wandb_files'
    wandb.teardown()


def read_wandb_records(path) -> list:
    """The records of an offline run's .wandb file: wandb's LevelDB-style log (32 KiB blocks of chunks, each with
    a 7-byte header: crc32, length, type) of protobuf Records. wandb has no public reader for it."""
    from wandb.proto import wandb_internal_pb2
    data = path.read_bytes()
    ident, magic, version = struct.unpack('<4sHB', data[:7])
    assert (ident, magic) == (b':W&B', 0xBEE1), "not a .wandb file of the expected format"
    block, pos, chunk, records = 32768, 7, b'', []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b''
    return records


def test_wandb_offline_logs_one_row_per_step(char_data, tmp_path, wandb_env):
    cfg = tiny_config(tmp_path / 'out-tiny', char_data, max_iters=6, eval_interval=3, log_interval=2, wandb_log=True)
    result = train(cfg)
    wandb.teardown()  # wandb.finish() may return before wandb's service has written the run's file; this waits

    (run_file,) = wandb_env.glob('wandb/offline-run-*/run-*.wandb')
    records = read_wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof('record_type') == 'run']
    assert (run.project, run.display_name) == ('shakespeare_char', 'out-tiny-sdpa')  # from dataset, out_dir, attn
    history = [{item.key or '/'.join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof('record_type') == 'history']
    # one row per iteration that evaluated or logged, at step=iter, evals merged into their step's row
    assert [h['_step'] for h in history] == [0, 2, 3, 4, 6]
    assert [(h['_step'], h['train/loss'], h['val/loss']) for h in history if 'val/loss' in h] == result['losses']
    assert [h['_step'] for h in history if 'train/step_loss' in h] == [0, 2, 4]
    assert all(h['lr'] > 0 for h in history)
    assert (tmp_path / 'out-tiny' / 'metrics.jsonl').is_file()  # W&B is in addition to the local file


def test_wandb_that_cannot_start_is_one_clear_error(char_data, tmp_path, wandb_env, monkeypatch):
    """Regression: without a login, a raw UsageError traceback."""
    monkeypatch.setenv('WANDB_MODE', 'online')  # and no API key anywhere: wandb.init refuses before the network
    with pytest.raises(ConfigError, match=r"W&B could not start \(UsageError: .*\): log in with `wandb login`, or "
                                          r"set WANDB_MODE=offline .*--wandb_log=False"):
        train(tiny_config(tmp_path, char_data, wandb_log=True))
    assert not (tmp_path / 'ckpt.pt').exists()
