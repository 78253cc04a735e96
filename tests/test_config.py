"""train.py's configuration: config files of plain assignments, then --key=value, checked against TrainConfig."""

import subprocess
import sys

import pytest

from helpers import ROOT
from train import TrainConfig, train
from utils import ConfigError, parse_config


def write(path, text):
    path.write_text(text)
    return str(path)


def test_file_then_overrides(tmp_path):
    cfg_file = write(tmp_path / 'c.py', "import math\nbatch_size = 4\nlearning_rate = 1e-3\nattn = 'naive'\n")
    cfg = parse_config([cfg_file, '--batch_size=8', '--attn=sdpa', "--out_dir='quoted'", '--wandb_run_name=2024'], TrainConfig)
    assert cfg.batch_size == 8 and cfg.learning_rate == 1e-3 and cfg.attn == 'sdpa'
    assert cfg.out_dir == 'quoted' and cfg.wandb_run_name == '2024'


def test_int_accepted_for_float():
    cfg = parse_config(['--dropout=0', '--learning_rate=1'], TrainConfig)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float) and isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize('arg,key,expected', [
    ('--max_iters=True', 'max_iters', 'int'),  # a bool is not an int here, though Python says it is
    ('--compile=1', 'compile', 'bool'),
    ('--learning_rate=fast', 'learning_rate', 'float'),
    ('--batch_size=1.5', 'batch_size', 'int'),
    ('--batch_size=big', 'batch_size', 'int'),
], ids=lambda x: str(x))
def test_wrong_type_names_key_and_type(arg, key, expected):
    with pytest.raises(ConfigError, match=rf"{key} expects {expected}"):
        parse_config([arg], TrainConfig)


def test_wrong_type_in_file_names_key_and_file(tmp_path):
    cfg_file = write(tmp_path / 'bad_type.py', "eval_only = 'yes'\n")
    with pytest.raises(ConfigError, match=r"eval_only expects bool.*bad_type\.py"):
        parse_config([cfg_file], TrainConfig)


def test_unknown_key_on_command_line_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate'.*'learning_rate'"):
        parse_config(['--lerning_rate=1e-3'], TrainConfig)


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    cfg_file = write(tmp_path / 'typo.py', "batch_size = 4\nn_heads = 6\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'n_heads'.*typo\.py"):
        parse_config([cfg_file], TrainConfig)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .*nope\.py.* not found"):
        parse_config([str(tmp_path / 'nope.py')], TrainConfig)


def test_syntax_error_names_file_and_line(tmp_path):
    cfg_file = write(tmp_path / 'broken.py', "batch_size = 4\nn_layer = = 6\n")
    with pytest.raises(ConfigError, match=r"broken\.py.*syntax error at line 2"):
        parse_config([cfg_file], TrainConfig)


def test_override_without_value_is_rejected():
    with pytest.raises(ConfigError, match=r"--key=value.*--compile"):
        parse_config(['--compile'], TrainConfig)


def test_bad_choice_is_named():
    with pytest.raises(ConfigError, match=r"attn must be one of .*'flash'"):
        parse_config(['--attn=flash'], TrainConfig)


@pytest.mark.parametrize('name', sorted(p.name for p in (ROOT / 'config').glob('*.py')))
def test_shipped_configs_parse(name):
    cfg = parse_config([str(ROOT / 'config' / name)], TrainConfig)
    assert isinstance(cfg, TrainConfig)


def test_triton_on_cpu_without_interpreter_says_what_to_use(tmp_path, monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    cfg = TrainConfig(out_dir=str(tmp_path), device='cpu', attn='triton')
    with pytest.raises(ConfigError, match=r"attn='sdpa' or attn='naive'.*TRITON_INTERPRET=1.*Without a GPU, "
                                          r"config/train_shakespeare_char_cpu\.py trains a small model in minutes"):
        train(cfg)  # stops before it looks for data or writes anything
    assert list(tmp_path.iterdir()) == []


def test_command_line_error_exits_with_message(tmp_path):
    r = subprocess.run([sys.executable, 'train.py', str(tmp_path / 'missing_config.py')], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert 'missing_config.py' in r.stderr and 'Traceback' not in r.stderr
