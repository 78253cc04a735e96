"""--help / -h on every entry point: the script's usage, then every setting with its type, default and the comment
written beside it in the config dataclass; the help starts no work and exits with 0."""

import dataclasses
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from compare import CompareOptions
from helpers import ROOT, load_script
from sample import SampleConfig
from train import TrainConfig
from utils import ConfigError, parse_config, read_settings, settings_help


@dataclass
class Example:
    # first section
    name: str = '#'  # a '#' inside a default is not a comment
    count: int = 3
    # second section,
    # over two lines
    ratio: float = (1.0 +
                    2.0)  # a default over two lines
    tags: str = field(default_factory=lambda: 'made')  # from a factory


def test_help_rows_come_from_the_dataclass_source():
    lines = settings_help(Example).splitlines()
    assert lines[0] == "settings (--key=value, or key = value in a config file; later ones win):"
    assert lines[1:] == [
        '',
        '  first section',
        "    --name=str     default '#'     a '#' inside a default is not a comment",
        '    --count=int    default 3',
        '',
        '  second section, over two lines',
        '    --ratio=float  default 3.0     a default over two lines',
        "    --tags=str     default 'made'  from a factory",
    ]


def test_help_shows_what_a_config_file_sets(tmp_path):
    cfg = tmp_path / 'c.py'
    cfg.write_text("count = 5\nname = 'x'\n")
    text = settings_help(Example, read_settings([str(cfg), '--ratio=3.0'], Example))
    assert "--count=int    default 3, here 5" in text and "default 3.0   " in text  # 3.0 is the default: no 'here'


@pytest.mark.parametrize('config_cls', [SampleConfig, CompareOptions])
def test_every_setting_has_a_comment(config_cls):
    """The help is only as good as the comments: each setting of these entry points says what it does."""
    for line in settings_help(config_cls).splitlines()[1:]:
        assert len(line.split(maxsplit=2)) == 3, f"{config_cls.__name__}: no comment in {line!r}"


def test_train_help_from_the_command_line():
    """The real entry point: exit status 0, usage, and every TrainConfig field with its default, before any work
    (the default dataset, openwebtext, does not exist here)."""
    r = subprocess.run([sys.executable, 'train.py', 'config/train_shakespeare_char_cpu.py', '--help'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    assert r.stdout.startswith('Train a GPT.')
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}={f.type.__name__} " in r.stdout, f.name
    out = ' '.join(r.stdout.split())  # the column widths follow the longest setting name
    assert "--grad_clip=float default 1.0 clip gradients at this norm; 0.0 turns clipping off" in out
    assert f"--max_iters=int default {TrainConfig.max_iters}, here 2000" in out  # what the config file sets


@pytest.mark.parametrize('flag', ['-h', '--help'])
def test_parse_config_help_exits_zero_and_prints_the_module_usage(flag, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(['--batch_size=4', flag], TrainConfig)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('Train a GPT.') and f'default {TrainConfig.batch_size}, here 4' in out


def test_unknown_flags_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"unknown option '-x': settings are given as --key=value \(--help"):
        parse_config(['-x'], TrainConfig)
    with pytest.raises(ConfigError, match=r"unknown config key 'frobnicate' \(on the command line\); --help lists"):
        parse_config(['--frobnicate=1'], TrainConfig)
    with pytest.raises(ConfigError, match=r"unknown config key 'help' \(on the command line\)"):
        parse_config(['--help=yes'], TrainConfig)


@pytest.mark.parametrize('script', ['data/shakespeare_char/prepare.py', 'data/shakespeare/prepare.py'])
def test_prepare_help(script, capsys):
    with pytest.raises(SystemExit) as e:
        load_script(script).main(['--help'])
    assert e.value.code == 0
    out = ' '.join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width
    assert '--input PATH a local copy of Tiny Shakespeare input.txt, UTF-8 text (default: input.txt next to' in out
    assert "--out_dir DIR where to write train.bin, val.bin and meta.pkl (default: this script's directory)" in out
    assert 'meta.pkl' in out.split('options:')[0]  # the docstring says what is written
