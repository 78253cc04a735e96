"""
Train one config with each attention implementation and compare loss, speed and memory.

    python compare.py config/train_shakespeare_char.py
    python compare.py config/train_shakespeare_char.py --impls=triton,sdpa --max_iters=1000 --report_dir=cmp
    python compare.py config/train_shakespeare_char_cpu.py --max_iters=200      # a small run on the CPU

Every run gets the same config, seed and data order; only `attn` (and out_dir, one per implementation) differ.
Each runs in a fresh process, so peak memory and torch.compile state belong to it alone, and one that runs out
of memory is reported as OOM while the others go on. Writes report_dir/compare.md (a table, with the ratio of
each implementation to ours), report_dir/compare.png (loss curves and throughput bars) and compare.json.
--wandb_log=True logs every run to W&B under wandb_run_name-<impl>.
"""
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import traceback

import torch

from model import ATTN_IMPLS as IMPLS
from train import TrainConfig, train
from utils import ConfigError, git_commit, parse_config


def _run_one(cfg: TrainConfig, result_path: str) -> None:
    """Child process: train, and leave the summary (or the reason there is none) in result_path."""
    try:
        result = train(cfg)
        result['status'] = 'ok'
    except torch.cuda.OutOfMemoryError as e:
        result = {'status': 'OOM', 'error': str(e).splitlines()[0]}
    except Exception as e:  # a failed run is reported in the table; the comparison goes on
        traceback.print_exc()
        # inside a compiled graph an allocation failure can surface as a plain RuntimeError
        status = 'OOM' if 'out of memory' in str(e).lower() else 'failed'
        result = {'status': status, 'error': f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    with open(result_path, 'w') as f:
        json.dump(result, f)


def run_config(cfg: TrainConfig, impl: str, report_dir: str) -> TrainConfig:
    """cfg for one implementation's run: only attn, the checkpoint directory and the W&B run name change."""
    return dataclasses.replace(cfg, attn=impl, out_dir=os.path.join(report_dir, impl),
                               wandb_run_name=f"{cfg.wandb_run_name}-{impl}")


def run_one(cfg: TrainConfig, impl: str, report_dir: str) -> dict:
    """Train cfg with attn=impl in a fresh process; returns its summary, or {'status': 'OOM' | 'failed', ...}."""
    run_cfg = run_config(cfg, impl, report_dir)
    result_path = os.path.join(report_dir, f'{impl}.json')
    if os.path.exists(result_path):
        os.remove(result_path)
    print(f"\n===== attn={impl} =====", flush=True)
    proc = mp.get_context('spawn').Process(target=_run_one, args=(run_cfg, result_path))  # clean CUDA + compile state
    proc.start()
    proc.join()
    if not os.path.exists(result_path):  # killed from outside (e.g. the host's OOM killer): nothing was written
        return {'status': 'failed', 'error': f'process exited with code {proc.exitcode}'}
    with open(result_path) as f:
        return json.load(f)


def _fmt(x, spec):
    return format(x, spec) if x is not None else '–'


def _ratio(ours, theirs, higher_is_better):
    """How many times better ours is than theirs (>1 = ours better)."""
    if ours is None or theirs is None or ours == 0 or theirs == 0:
        return '–'
    return f"{(ours / theirs if higher_is_better else theirs / ours):.3f}x"  # 3 digits: goals sit near 1.00x


def markdown_table(results: dict, header: str) -> str:
    ours = results.get('triton', {})
    lines = [header, '',
             '| attn | status | best val loss | final val loss | ms/iter (median) | tokens/s | peak GPU memory | '
             'ours vs it: tokens/s | ours vs it: memory |',
             '|---|---|---|---|---|---|---|---|---|']
    for impl, r in results.items():
        ok = r.get('status') == 'ok'
        mem = r.get('peak_mem_bytes') if ok else None
        lines.append('| ' + ' | '.join([
            impl, r['status'] if ok else f"**{r['status']}**",
            _fmt(r.get('best_val_loss') if ok else None, '.4f'),
            _fmt(r.get('val_loss') if ok else None, '.4f'),
            _fmt(r.get('ms_per_iter') if ok else None, '.2f'),
            _fmt(r.get('tokens_per_sec') if ok else None, ',.0f'),
            f"{mem / 2**30:.2f} GiB" if mem else '–',
            _ratio(ours.get('tokens_per_sec'), r.get('tokens_per_sec') if ok else None, True),
            _ratio(ours.get('peak_mem_bytes'), mem, False),
        ]) + ' |')
    return '\n'.join(lines)


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')  # files only, no display
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    impls = list(results)
    for impl in impls:
        r = results[impl]
        if r.get('status') == 'ok' and r.get('losses'):
            it, tr, va = zip(*r['losses'])
            line, = ax_loss.plot(it, va, label=f'{impl} val')
            ax_loss.plot(it, tr, '--', color=line.get_color(), alpha=0.6, label=f'{impl} train')
    ax_loss.set_xlabel('iteration')
    ax_loss.set_ylabel('loss')
    ax_loss.set_title('loss')
    ax_loss.legend()
    speeds = [results[i].get('tokens_per_sec') or 0 for i in impls]
    bars = ax_speed.bar(impls, speeds, color=['C0', 'C1', 'C2', 'C3'][:len(impls)])
    for bar, impl in zip(bars, impls):
        status = results[impl].get('status')
        label = f"{bar.get_height():,.0f}" if status == 'ok' else status
        ax_speed.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha='center', va='bottom')
    ax_speed.set_ylabel('tokens/s (steady state)')
    ax_speed.set_title('training throughput')
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(cfg: TrainConfig) -> str:
    commit = git_commit()
    device = torch.cuda.get_device_name() if cfg.device.startswith('cuda') else 'cpu'
    return (f"{device} | torch {torch.__version__} | commit {commit} | {cfg.n_layer}x{cfg.n_embd}, "
            f"{cfg.n_head} heads, T={cfg.block_size}, B={cfg.batch_size}x{cfg.gradient_accumulation_steps}, "
            f"dropout {cfg.dropout}, {cfg.max_iters} iters, compile={cfg.compile}, cudagraphs={cfg.cudagraphs}, "
            f"dataset {cfg.dataset}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    impls, report_dir, rest = list(IMPLS), 'compare-out', []
    for arg in argv:  # compare.py's own two options; everything else is train.py's config
        if arg.startswith('--impls='):
            impls = [s for s in arg.split('=', 1)[1].split(',') if s]
        elif arg.startswith('--report_dir='):
            report_dir = arg.split('=', 1)[1]
        else:
            rest.append(arg)
    try:
        unknown = [i for i in impls if i not in IMPLS]
        if unknown or not impls:
            raise ConfigError(f"--impls takes a comma-separated subset of {IMPLS}, got {impls}")
        cfg = parse_config(rest, TrainConfig)
    except ConfigError as e:
        sys.exit(f"error: {e}")

    os.makedirs(report_dir, exist_ok=True)
    title = describe(cfg)
    results = {}
    for impl in impls:
        results[impl] = run_one(cfg, impl, report_dir)
        # the report is rewritten after every run, so a comparison cut short still leaves what it measured
        table = markdown_table(results, f"`python compare.py {' '.join(argv)}`\n\n{title}")
        with open(os.path.join(report_dir, 'compare.md'), 'w') as f:
            f.write(table + '\n')
        with open(os.path.join(report_dir, 'compare.json'), 'w') as f:
            json.dump({'config': dataclasses.asdict(cfg), 'title': title, 'results': results}, f, indent=1)
        plot(results, os.path.join(report_dir, 'compare.png'), title)
    print('\n' + table)
    print(f"\nwrote {report_dir}/compare.md, compare.png, compare.json")


if __name__ == '__main__':
    main()
