"""The README's CPU quick start, walked command by command in a scratch copy of the repository: `bash run.sh` with
extra arguments, then the by-hand commands, each checked to do what the README says it does.

The commands are read from the README's ```sh blocks marked `<!-- test_quickstart: NAME -->`, so the quick start
is tested as written. The install lines (venv, pip) are checked but not run: every command runs on this test's
interpreter, which run.sh takes through PYTHON=. CUDA is hidden from the commands, so a GPU machine walks the CPU
path too."""

import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ROOT, SHAKESPEARE, load_script, requires_shared, tiny_config

pytestmark = requires_shared

# appended to the README's training commands so that each run takes seconds; no warmup, so that the val loss has
# improved by the evaluation at step 10 or 20 and a checkpoint is saved
TRAIN_OVERRIDES = ['--max_iters=20', '--eval_interval=10', '--eval_iters=2', '--warmup_iters=0']
SAMPLE_OVERRIDES = ['--max_new_tokens=100']
CPU_CONFIG = 'config/train_shakespeare_char_cpu.py'
VENV_PYTHON = '.venv/bin/python'
SEPARATOR = '---------------'  # sample.py prints it after each sample


def readme_commands(name: str) -> list[list[str]]:
    """The commands of the README's ```sh block marked <!-- test_quickstart: name -->, split as a shell would."""
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    block = re.search(rf'<!-- test_quickstart: {name} -->\n```sh\n(.*?)```', readme, re.S)
    assert block, f"README.md has no ```sh block right after <!-- test_quickstart: {name} -->"
    return [args for args in (shlex.split(line, comments=True) for line in block.group(1).splitlines()) if args]


def is_install(args: list[str]) -> bool:
    return args[:3] == ['python3', '-m', 'venv'] or args[:2] == ['.venv/bin/pip', 'install']


def scratch_copy(dest: Path) -> Path:
    """The repository's tracked files (as they are in the working tree) copied to dest: no data, no outputs."""
    try:
        listed = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"the scratch copy needs `git ls-files` in the repository: {e}")
    for rel in filter(None, listed.decode().split('\0')):
        src = ROOT / rel
        if src.is_file() and not src.is_symlink():  # a tracked file deleted in the working tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def plant_decoy(out_dir: Path, tmp: Path) -> bytes:
    """A checkpoint whose vocabulary is digits and newline, at the CPU config's out_dir, where run.sh sampled from
    whatever --out_dir it was given. Returns its bytes."""
    from train import train
    digits = tmp / 'digits'
    load_script('data/shakespeare_char/prepare.py').prepare('0123456789\n' * 300, str(digits))
    train(tiny_config(out_dir, digits, max_iters=2, eval_interval=2))
    return (out_dir / 'ckpt.pt').read_bytes()


def run(args: list[str], repo: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"`{shlex.join(args)}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc.stdout


def load_ckpt(out_dir: Path) -> dict:
    return torch.load(out_dir / 'ckpt.pt', map_location='cpu', weights_only=True)


@pytest.mark.skipif(shutil.which('bash') is None, reason="run.sh needs bash")
def test_readme_cpu_quick_start(tmp_path):
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    repo = scratch_copy(tmp_path / 'repo')
    # the README's offline instruction: a local copy of input.txt where prepare.py and run.sh look for it
    shutil.copy(SHAKESPEARE, repo / 'data' / 'shakespeare_char' / 'input.txt')
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}  # a user's shell has none
    env.update(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    # one thread per command: the model is tiny, and on a busy 2-core machine torch's default threads made a 20-step
    # run of train.py take 105 s instead of 19 (same losses)
    env.setdefault('OMP_NUM_THREADS', '1')
    default_out = repo / runpy.run_path(str(repo / CPU_CONFIG))['out_dir']
    decoy = plant_decoy(default_out, tmp_path)

    # 1. the CPU path: make the venv, install torch's CPU build, bash run.sh
    cpu_run = readme_commands('cpu-run')
    installs = [args for args in cpu_run if is_install(args)]
    assert any('https://download.pytorch.org/whl/cpu' in args for args in installs), \
        "the CPU quick start must install torch's CPU build"
    [run_sh] = [args for args in cpu_run if not is_install(args)]
    assert run_sh[:2] == ['bash', 'run.sh'], run_sh
    run_out = tmp_path / 'run-out'
    out = run(run_sh + TRAIN_OVERRIDES + [f'--out_dir={run_out}'], repo, env)
    assert not (repo / '.venv').exists(), "with PYTHON set, run.sh must not make a venv"
    assert f"training the small CPU config, {CPU_CONFIG}" in out
    ckpt = load_ckpt(run_out)
    assert ckpt['config']['out_dir'] == str(run_out) and ckpt['config']['max_iters'] == 20
    assert ckpt['meta']['vocab_size'] == 65  # Tiny Shakespeare's characters
    # the sample comes from the checkpoint trained into --out_dir, not from the config's default out_dir
    assert f"sampling from {run_out}/ckpt.pt" in out, out[-2000:]
    assert (default_out / 'ckpt.pt').read_bytes() == decoy, "run.sh touched a checkpoint outside its --out_dir"
    expected = run([sys.executable, 'sample.py', f'--out_dir={run_out}', '--num_samples=1', '--max_new_tokens=500'],
                   repo, env)
    assert expected.strip() and expected in out, "run.sh's sample is not sample.py's for the --out_dir checkpoint"

    # 2. the same by hand, each command on the venv's Python, with small overrides
    by_hand = [args for args in readme_commands('cpu-by-hand') if not is_install(args)]
    assert all(args[0] == VENV_PYTHON for args in by_hand), "the README's by-hand commands run .venv/bin/python"
    assert [args[1] for args in by_hand] == ['data/shakespeare_char/prepare.py', 'train.py', 'sample.py'], by_hand
    prepare, train_cmd, sample_cmd = ([sys.executable] + args[1:] for args in by_hand)

    out = run(prepare, repo, env)
    vocab, n_train, n_val = re.search(r'characters, vocab (\d+), train ([\d,]+) and val ([\d,]+) tokens',
                                      readme).groups()
    for line in (f"vocab size: {vocab}", f"train has {n_train} tokens", f"val has {n_val} tokens"):
        assert line in out, f"prepare.py does not print the README's expected {line!r}:\n{out}"

    assert CPU_CONFIG in train_cmd
    # the decoy stands for an earlier run's model there: train.py refuses to replace it, as the README says
    refused = subprocess.run(train_cmd + TRAIN_OVERRIDES, cwd=repo, env=env, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode == 1 and '--overwrite=True' in refused.stderr, refused.stderr[-2000:]
    assert (default_out / 'ckpt.pt').read_bytes() == decoy
    assert '`--overwrite=True`' in readme
    out = run(train_cmd + TRAIN_OVERRIDES + ['--overwrite=True'], repo, env)
    assert f"saved checkpoint to {default_out.name}" in out
    ckpt = load_ckpt(default_out)  # the decoy is replaced by this run's model, as asked
    assert ckpt['config']['max_iters'] == 20 and ckpt['meta']['vocab_size'] == int(vocab)

    assert f'--out_dir={default_out.name}' in sample_cmd, "the by-hand sample reads the config's out_dir"
    start = next(a for a in sample_cmd if a.startswith('--start=')).removeprefix('--start=')
    num_samples = int(next(a for a in sample_cmd if a.startswith('--num_samples=')).split('=')[1])
    out = run(sample_cmd + SAMPLE_OVERRIDES, repo, env)
    samples = [s.strip('\n') for s in out.split(SEPARATOR)[:-1]]
    assert len(samples) == num_samples and all(s.startswith(start) for s in samples), out
    # from the Shakespeare model: its text has letters, which the digits-only decoy could not have written
    assert all(re.search('[a-z]', s[len(start):]) for s in samples), samples
