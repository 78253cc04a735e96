"""
Several processes against one: the checks a DDP run must pass, in one command.

    python tools/ddp_check.py                                   # 2 GPUs, config/train_gpt2_shape.py, 300 iters
    python tools/ddp_check.py --nproc=4 --max_iters=200
    python tools/ddp_check.py --config=config/train_shakespeare_char_cpu.py --max_iters=40 \
        --extra="--backend=gloo --device=cpu"                   # the same checks as processes on a CPU

Each run trains in a fresh process (torchrun for several) into its own out_dir under --out_root and is read back
from its metrics.jsonl:
  speed      one process with accumulation A, then nproc processes with accumulation nproc * A: each process does
             the same work per step, so tokens/s should grow about nproc times
  curve      one process with accumulation nproc * A (the same batch per step as the DDP run), twice with two seeds
             to measure run-to-run noise, against the DDP run's val losses
  resume     the DDP run to half the iterations, then --init_from=resume to the end: its last val loss against the
             straight run's
  kill       a DDP run whose rank 1 is killed after --kill_after seconds: every process must end, each with an
             `error:` line, within ddp_timeout (not hang)
run_checks() returns the numbers; main prints them as a table.
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def metrics(out_dir: str) -> list[dict]:
    with open(os.path.join(out_dir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def val_curve(rows: list[dict]) -> dict[int, float]:
    return {r['iter']: r['val/loss'] for r in rows if 'val/loss' in r}


def tokens_per_sec(rows: list[dict]) -> float:
    """Median of the logged windows after the first (which holds compilation)."""
    rates = sorted(r['tokens_per_sec'] for r in rows if r.get('tokens_per_sec'))[1:] or [0.0]
    return rates[len(rates) // 2]


def command(nproc: int, args: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, 'train.py', *args]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', 'train.py',
            *args]


def train(name: str, nproc: int, accum: int, opts, *more: str) -> list[dict]:
    """One run into out_root/name; its metrics rows. Exits with the end of the run's log when it fails."""
    out_dir = os.path.join(opts.out_root, name)
    args = [opts.config, f'--out_dir={out_dir}', f'--gradient_accumulation_steps={accum}',
            f'--max_iters={opts.max_iters}', f'--eval_interval={opts.eval_interval}', *shlex.split(opts.extra), *more]
    log_path = os.path.join(opts.out_root, f'{name}.log')
    with open(log_path, 'w') as log:
        done = subprocess.run(command(nproc, args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        with open(log_path) as f:
            errors = [line.strip() for line in f if line.startswith('error:')] or ['(no error line; see the log)']
        sys.exit(f"error: the {name} run failed: {errors[-1].removeprefix('error: ')} (its log: {log_path})")
    return metrics(out_dir)


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (Linux /proc)."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    if int(f.read().rsplit(')', 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def kill_one_rank(opts) -> dict:
    """Start a DDP run, kill one worker, and time how long the others take to end."""
    out_dir = os.path.join(opts.out_root, 'kill')
    args = [opts.config, f'--out_dir={out_dir}', f'--gradient_accumulation_steps={opts.nproc * opts.accum}',
            '--max_iters=100000', f'--ddp_timeout={opts.ddp_timeout}', *shlex.split(opts.extra)]
    log_path = os.path.join(opts.out_root, 'kill.log')
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(command(opts.nproc, args), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(opts.kill_after)
        workers = sorted(children(proc.pid))
        if len(workers) < 2:
            proc.kill()
            return {'ended': False, 'seconds': None, 'error_lines': 0, 'note': f'found {len(workers)} workers'}
        os.kill(workers[-1], signal.SIGKILL)
        t0 = time.perf_counter()
        try:
            proc.wait(timeout=opts.ddp_timeout + 60)
            ended = True
        except subprocess.TimeoutExpired:
            proc.kill()
            ended = False
    with open(log_path) as f:
        errors = sum('error: rank' in line for line in f)
    return {'ended': ended, 'seconds': time.perf_counter() - t0, 'error_lines': errors, 'note': ''}


def run_checks(opts) -> dict:
    os.makedirs(opts.out_root, exist_ok=True)
    n, a = opts.nproc, opts.accum
    one = train('one', 1, a, opts)
    ddp = train('ddp', n, n * a, opts)
    same_batch = [train(f'one_x{n}_seed{s}', 1, n * a, opts, f'--seed={s}') for s in (1337, 1338)]
    half = opts.max_iters // 2
    train('resume', n, n * a, opts, f'--max_iters={half}', '--always_save_checkpoint=True')
    resumed = train('resume', n, n * a, opts, '--init_from=resume')
    curves = [val_curve(rows) for rows in (ddp, *same_batch, resumed)]
    last = max(curves[0])
    return {
        'tokens_per_sec_one': tokens_per_sec(one),
        'tokens_per_sec_ddp': tokens_per_sec(ddp),
        'speedup': tokens_per_sec(ddp) / max(tokens_per_sec(one), 1e-9),
        'val_ddp': curves[0],
        'val_one': curves[1],
        'noise': max(abs(curves[1][i] - curves[2][i]) for i in curves[1]),  # two seeds, one process
        'gap': max(abs(curves[0][i] - curves[1][i]) for i in curves[0] if i in curves[1]),
        'resume_last_val': curves[3].get(last),
        'straight_last_val': curves[0][last],
        'kill': kill_one_rank(opts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='config/train_gpt2_shape.py')
    parser.add_argument('--nproc', type=int, default=2)
    parser.add_argument('--accum', type=int, default=1, help='micro-steps per process per optimizer step')
    parser.add_argument('--max_iters', type=int, default=300)
    parser.add_argument('--eval_interval', type=int, default=50)
    parser.add_argument('--ddp_timeout', type=float, default=60.0, help='for the kill check')
    parser.add_argument('--kill_after', type=float, default=90.0, help='seconds of training before the kill')
    parser.add_argument('--extra', default='', help='more train.py arguments, e.g. "--backend=gloo --device=cpu"')
    parser.add_argument('--out_root', default='out-ddp-check')
    opts = parser.parse_args()
    if opts.nproc < 2:  # the checks compare several processes with one, and kill one of several
        parser.error(f"--nproc must be >= 2, got {opts.nproc}")
    on_cpu = '--device=cpu' in shlex.split(opts.extra)
    if not on_cpu and torch.cuda.device_count() < opts.nproc:
        sys.exit(f"error: ddp_check.py runs {opts.nproc} processes on a GPU each, and torch sees "
                 f"{torch.cuda.device_count()} GPU(s) here: lower --nproc, or run the checks as processes on a CPU "
                 f"(--config=config/train_shakespeare_char_cpu.py --max_iters=40 --extra=\"--backend=gloo "
                 f"--device=cpu\")")
    r = run_checks(opts)
    k = r['kill']
    print(f"| check | result |\n|---|---|\n"
          f"| tokens/s, 1 process (accumulation {opts.accum}) | {r['tokens_per_sec_one']:,.0f} |\n"
          f"| tokens/s, {opts.nproc} processes (accumulation {opts.nproc * opts.accum}) | "
          f"{r['tokens_per_sec_ddp']:,.0f} ({r['speedup']:.2f}x) |\n"
          f"| largest val-loss gap, DDP vs 1 process with the same batch | {r['gap']:.4f} |\n"
          f"| largest val-loss gap, 1 process, seed 1337 vs 1338 (noise) | {r['noise']:.4f} |\n"
          f"| last val loss, resumed vs straight | {r['resume_last_val']} vs {r['straight_last_val']:.4f} |\n"
          f"| rank killed: all ended / seconds / error lines | {k['ended']} / "
          f"{k['seconds'] if k['seconds'] is None else round(k['seconds'], 1)} / {k['error_lines']} {k['note']} |")
    print("val loss by iteration, DDP:", r['val_ddp'])
    print("val loss by iteration, 1 process:", r['val_one'])


if __name__ == '__main__':
    main()
