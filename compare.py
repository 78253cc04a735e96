"""
Train one config with each attention implementation and compare loss, speed and memory.

    python compare.py config/train_shakespeare_char.py
    python compare.py config/train_shakespeare_char.py --impls=triton,sdpa --max_iters=1000 --report_dir=cmp
    python compare.py config/train_shakespeare_char_cpu.py --impls=sdpa,naive --max_iters=200  # on a CPU

Every run gets the same config, seed and data order; only `attn` (and out_dir, one per implementation) differ.
Each runs in a fresh process, so peak memory and torch.compile state belong to it alone, and one that runs out
of memory is reported as OOM while the others go on. Writes report_dir/compare.md (a table, with the ratio of
each implementation to ours), report_dir/compare.png (loss curves and throughput bars) and compare.json.
--wandb_log=True logs every run to W&B as wandb_run_name-<impl>, all in one group (one per comparison), and adds
a run <group>-summary to that group with the table (a wandb.Table) and the plot.
--help lists compare.py's own options and every training setting.

Before any run starts, every run's settings are checked as train.py checks them (device, dtype, and whether each
attn can run there), and report_dir is made: a comparison that cannot finish stops with one `error:` line instead
of after the runs before it have trained. A run that stops on a mistake (missing data, say) is one `error:` line,
the table's status and compare.json's error; the others go on.
Exit status: 0 when every run finished or ran out of memory (OOM is a result the table reports) and at least one
finished; 1 when a setting is refused before the runs, when a run failed for another reason, or when none
finished. The report is written in every case where a run started.
"""
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass

import torch

from model import ATTN_IMPLS as IMPLS
from train import TrainConfig, TrainingError, end_processes, setup_processes, train
from utils import (HELP_FLAGS, CheckpointError, ConfigError, first_line, git_commit, out_of_memory, parse_config,
                   read_settings, settings_help, table_cell)


@dataclass
class CompareOptions:
    impls: str = ','.join(IMPLS)  # the attention implementations to train, comma-separated, in this order
    report_dir: str = 'compare-out'  # report and checkpoints (not out_dir); a re-run replaces its report and runs


def _run_one(cfg: TrainConfig, result_path: str) -> None:
    """Child process: train, and leave the summary (or the reason there is none) in result_path."""
    try:
        result = train(cfg)
        result['status'] = 'ok'
    except KeyboardInterrupt:  # Ctrl-C reaches this process too: the parent reports it, in one line
        return
    except (ConfigError, CheckpointError, FileNotFoundError, TrainingError) as e:
        # what train.py's main reports in one line: a mistake to fix or a fault to retry, not a bug to trace
        print(f"error: attn={cfg.attn}: {e}", file=sys.stderr, flush=True)
        result = {'status': 'failed', 'error': str(e)}
    except Exception as e:  # a failed run is reported in the table; the comparison goes on
        if out_of_memory(e):  # a result, on the GPU or the CPU: the table says OOM
            print(f"attn={cfg.attn}: out of memory ({first_line(e, 160)})", file=sys.stderr, flush=True)
            result = {'status': 'OOM', 'error': first_line(e)}
        else:
            traceback.print_exc()
            result = {'status': 'failed', 'error': f"{type(e).__name__}: {first_line(e)}"}
    with open(result_path, 'w') as f:
        json.dump(result, f)


def run_config(cfg: TrainConfig, impl: str, report_dir: str, wandb_group: str = '') -> TrainConfig:
    """cfg for one implementation's run: only attn, the checkpoint directory and the W&B run name and group
    change. A comparison run again into the same report_dir replaces its own runs there: those whose result file
    (report_dir/<impl>.json) an earlier comparison wrote; any other checkpoint there train.py refuses to replace."""
    ours = os.path.isfile(os.path.join(report_dir, f'{impl}.json'))
    return dataclasses.replace(cfg, attn=impl, out_dir=os.path.join(report_dir, impl), overwrite=cfg.overwrite or ours,
                               wandb_run_name=f"{cfg.wandb_run_name or cfg.dataset}-{impl}", wandb_group=wandb_group)


def run_one(cfg: TrainConfig, impl: str, report_dir: str, wandb_group: str = '') -> dict:
    """Train cfg with attn=impl in a fresh process; returns its summary, or {'status': 'OOM' | 'failed', ...}.
    With cfg.wandb_log, the run goes into the W&B group wandb_group."""
    run_cfg = run_config(cfg, impl, report_dir, wandb_group)
    result_path = os.path.join(report_dir, f'{impl}.json')
    # written before the run, so report_dir/<impl> stays this comparison's (a re-run may replace it: run_config)
    # even when the run is interrupted or killed before it writes its own result over this one
    unfinished = {'status': 'failed', 'error': 'the run did not finish'}
    with open(result_path, 'w') as f:
        json.dump(unfinished, f)
    print(f"\n===== attn={impl} =====", flush=True)
    # spawn: a clean CUDA and compile state per run
    proc = mp.get_context('spawn').Process(target=_run_one, args=(run_cfg, result_path))
    proc.start()
    proc.join()
    with open(result_path) as f:
        result = json.load(f)
    if result == unfinished:  # killed from outside (e.g. the host's OOM killer)
        result['error'] = f'process exited with code {proc.exitcode}'
    return result


def check_runs(cfg: TrainConfig, impls: list[str], report_dir: str) -> None:
    """The checks train() makes before it trains (settings, device, dtype, attn on them), made for every run
    before the first starts: otherwise a run that cannot start is found only after the ones before it trained.
    Raises ConfigError."""
    if os.environ.get('RANK') is not None:  # setup_processes would join torchrun's process group
        raise ConfigError("compare.py trains on one device: start it with python, not torchrun (to compare on "
                          "several GPUs, run train.py under torchrun once per --attn)")
    # first as attn='naive', which runs on any device in any dtype: what fails there fails for every run
    end_processes(setup_processes(run_config(cfg, 'naive', report_dir)))
    for impl in impls:
        try:
            end_processes(setup_processes(run_config(cfg, impl, report_dir)))
        except ConfigError as e:
            others = ','.join(i for i in impls if i != impl)
            leave_out = f"--impls={others}" if others else "another --impls"
            raise ConfigError(f"{impl} cannot run in this comparison: {e} (compare.py sets attn from --impls: "
                              f"leave {impl} out with {leave_out})") from None


def check_report_dir(report_dir: str) -> None:
    """Make report_dir and write a file in it, so that a report that cannot be written stops the comparison
    before the runs, not after them. Raises ConfigError."""
    if os.path.exists(report_dir) and not os.path.isdir(report_dir):
        raise ConfigError(f"--report_dir={report_dir!r} is a file, not a directory: give a directory (it is made "
                          f"when absent)")
    try:
        os.makedirs(report_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=report_dir):
            pass
    except OSError as e:  # a parent that is a file, no permission, a read-only file system
        raise ConfigError(f"--report_dir={report_dir!r} cannot be made or written ({e.strerror or e}): give a "
                          f"directory that can be") from None


def failures(results: dict) -> str:
    """'' when the comparison succeeded (every run finished or ran out of memory, at least one finished),
    else the one line that says what went wrong."""
    statuses = ', '.join(f"{impl} {r['status']}" for impl, r in results.items() if r['status'] != 'ok')
    if all(r['status'] != 'ok' for r in results.values()):
        return f"no implementation finished ({statuses})"
    if any(r['status'] not in ('ok', 'OOM') for r in results.values()):
        return f"not every run finished ({statuses})"
    return ''


def _ratio(ours, theirs, higher_is_better):
    """How many times better ours is than theirs (>1 = ours better); None when either is missing."""
    if not ours or not theirs:
        return None
    return ours / theirs if higher_is_better else theirs / ours


COLUMNS = ['attn', 'status', 'best val loss', 'final val loss', 'ms/iter (median)', 'tokens/s', 'peak GPU memory GiB',
           'ours vs it: tokens/s', 'ours vs it: memory']


def comparison_rows(results: dict) -> list[list]:
    """One row per implementation, in COLUMNS' order, as numbers (None where there is no value): what
    compare.md formats and what W&B gets as a table."""
    ours = results.get('triton', {})
    rows = []
    for impl, r in results.items():
        measured = r if r.get('status') == 'ok' else {}  # a failed run's partial numbers mean nothing
        mem = measured.get('peak_mem_bytes')
        rows.append([impl, r['status'], measured.get('best_val_loss'), measured.get('val_loss'),
                     measured.get('ms_per_iter'), measured.get('tokens_per_sec'), mem / 2**30 if mem else None,
                     _ratio(ours.get('tokens_per_sec'), measured.get('tokens_per_sec'), True),
                     _ratio(ours.get('peak_mem_bytes'), mem, False)])
    return rows


def markdown_table(results: dict, header: str) -> str:
    lines = [header, '', '| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for impl, status, best, final, ms, tok_s, mem, ratio_tok_s, ratio_mem in comparison_rows(results):
        cells = [impl, status if status == 'ok' else f"**{status}**", table_cell(best, '.4f'),
                 table_cell(final, '.4f'), table_cell(ms, '.2f'), table_cell(tok_s, ',.0f'), table_cell(mem, '.2f')]
        # ratios to 3 digits: the goals sit near 1.00x
        cells += [table_cell(r, '.3f') + ('x' if r is not None else '') for r in (ratio_tok_s, ratio_mem)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    # why a run has no numbers, under the table: the status alone does not say what to fix
    notes = [f"- {impl}: {r['status']}: {r.get('error') or 'no reason recorded'}" for impl, r in results.items()
             if r.get('status') != 'ok']
    return '\n'.join(lines + ([''] + notes if notes else []))


def log_to_wandb(cfg: TrainConfig, results: dict, plot_path: str, group: str) -> None:
    """Add a run <group>-summary to the comparison's W&B group: the table (wandb.Table, numbers as in
    compare.md) and the plot, and each implementation's headline numbers in the run's summary."""
    import wandb
    run = wandb.init(project=cfg.wandb_project, group=group, name=f"{group}-summary", job_type='compare',
                     config=dataclasses.asdict(cfg))
    rows = comparison_rows(results)
    run.log({'comparison': wandb.Table(columns=COLUMNS, data=rows), 'comparison_plot': wandb.Image(plot_path)})
    for row in rows:
        for column, value in zip(COLUMNS[2:], row[2:]):
            if value is not None:
                run.summary[f"{row[0]}/{column}"] = value
    run.finish()


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
    if ax_loss.lines:  # no run finished: no curves to name
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
    own_keys = tuple(f"--{f.name}=" for f in dataclasses.fields(CompareOptions))
    own = [arg for arg in argv if arg.startswith(own_keys)]
    rest = [arg for arg in argv if not arg.startswith(own_keys) and arg not in HELP_FLAGS]
    try:
        if any(arg in HELP_FLAGS for arg in argv):
            train_title = "training settings, as in train.py (--key=value, or key = value in a config file)"
            print(f"{__doc__.strip()}\n\n{settings_help(CompareOptions, title='options of compare.py')}\n\n"
                  f"{settings_help(TrainConfig, read_settings(rest, TrainConfig), title=train_title)}")
            sys.exit(0)
        options = parse_config(own, CompareOptions)
        impls = [s for s in options.impls.split(',') if s]
        unknown = [i for i in impls if i not in IMPLS]
        if unknown or not impls or len(set(impls)) < len(impls):
            raise ConfigError(f"--impls takes a comma-separated subset of {IMPLS}, each once, got {impls}")
        # each run's out_dir is report_dir/<impl>: a config file's out_dir (every training config sets one) is
        # left unused, as its comment says, but asking for one on the command line is refused
        if any(arg.startswith('--out_dir=') for arg in rest):
            raise ConfigError("compare.py does not use out_dir: each run goes into report_dir/<impl>; give "
                              "--report_dir instead")
        cfg = parse_config(rest, TrainConfig)
        if cfg.wandb_log:
            try:
                import wandb  # noqa: F401 (checked before any training time is spent)
            except ImportError:
                raise ConfigError("wandb_log=True but wandb is not installed: pip install wandb, "
                                  "or --wandb_log=False") from None
        report_dir = options.report_dir
        check_runs(cfg, impls, report_dir)
        check_report_dir(report_dir)
    except ConfigError as e:
        sys.exit(f"error: {e}")

    title = describe(cfg)
    # one W&B group per comparison, so that runs of different comparisons never mix
    group = f"{cfg.wandb_run_name or cfg.dataset}-compare-{time.strftime('%Y%m%d-%H%M%S')}" if cfg.wandb_log else ''
    results = {}
    for impl in impls:
        try:
            results[impl] = run_one(cfg, impl, report_dir, group)
        except KeyboardInterrupt:  # the runs already finished are in the report files, written after each
            before = f"; {report_dir}/compare.md has the runs before it" if results else ''
            sys.exit(f"interrupted during the {impl} run{before}: run the same command again to compare all")
        # the report is rewritten after every run, so a comparison cut short still leaves what it measured
        table = markdown_table(results, f"`python compare.py {' '.join(argv)}`\n\n{title}")
        with open(os.path.join(report_dir, 'compare.md'), 'w') as f:
            f.write(table + '\n')
        with open(os.path.join(report_dir, 'compare.json'), 'w') as f:
            json.dump({'config': dataclasses.asdict(cfg), 'title': title, 'wandb_group': group or None,
                       'results': results}, f, indent=1)
        plot(results, os.path.join(report_dir, 'compare.png'), title)
    print('\n' + table)
    print(f"\nwrote {report_dir}/compare.md, compare.png, compare.json")
    if group:
        try:
            log_to_wandb(cfg, results, os.path.join(report_dir, 'compare.png'), group)
            print(f"logged the table to W&B: project {cfg.wandb_project}, group {group}")
        except Exception as e:  # login, network, quota: the report files above are written either way
            print(f"warning: the table was not logged to W&B ({type(e).__name__}: "
                  f"{first_line(e)}); the report files have it")
    if problem := failures(results):
        sys.exit(f"error: {problem}: {report_dir}/compare.md says why, under the table")


if __name__ == '__main__':
    main()
