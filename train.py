"""
Train a GPT. One GPU, or several through torchrun, or the CPU.

    python train.py config/train_shakespeare_char.py --batch_size=32 --attn=sdpa
    torchrun --standalone --nproc_per_node=4 train.py config/train_shakespeare_char.py

A config file is plain Python assignments to the names in TrainConfig; --key=value on the command line
overrides it. With neither, TrainConfig's defaults train nanoGPT's baby GPT on shakespeare_char (prepare it first:
python data/shakespeare_char/prepare.py). Importing this module does nothing: the entry points are
train(TrainConfig) and main(argv).
"""

import dataclasses
import datetime
import gc
import json
import math
import os
import re
import signal
import socket
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

import hf_gpt2
from model import ATTN_IMPLS, GPT, GPTConfig, check_attn_device
from utils import (REPO_DIR, CheckpointError, ConfigError, autocast_context, checkpoint_path, describe_meta,
                   first_line, gpu_peak_flops, load_checkpoint, load_tokens, meta_mismatch, model_from_checkpoint,
                   out_of_memory, parse_config, prepare_hint, read_meta, replace_file, resolve_dtype, save_checkpoint,
                   tokenizer_of)

try:
    import fcntl
except ImportError:  # Windows has no flock: there, nothing stops two runs from sharing an out_dir
    fcntl = None

# GPTConfig's fields, by who decides them. vocab_size comes from the dataset. dropout and attn leave the function
# the weights compute unchanged, so a resumed run may change them. The rest fix the architecture (the parameters'
# shapes, or how they are read, as n_head does): on resume the checkpoint's values win.
RUNTIME_KEYS = ('dropout', 'attn')
ARCH_KEYS = tuple(f.name for f in dataclasses.fields(GPTConfig) if f.name not in RUNTIME_KEYS + ('vocab_size',))
# eval batches come from a generator of their own seeded with seed + this: far from every rank's training seed
# (seed + rank), so evals never score the batches the first steps train on
EVAL_SEED_OFFSET = 10_000


class TrainingError(RuntimeError):
    """A run that stopped on a fault (divergence, a hung or failed process); the message says what to try."""


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = 'out'  # checkpoint, metrics.jsonl and config.json go here
    eval_interval: int = 250  # evaluate (and maybe save) every this many iterations
    log_interval: int = 10  # print a progress line every this many iterations (each one syncs the GPU once)
    eval_iters: int = 200  # batches per split per evaluation
    eval_only: bool = False  # evaluate once, then exit
    always_save_checkpoint: bool = False  # save at every eval, not only when val loss improves
    init_from: str = 'scratch'  # 'scratch' | 'resume' (out_dir/ckpt.pt) | 'gpt2'...'gpt2-xl' | a Hugging Face GPT-2 dir
    overwrite: bool = False  # let a run that does not resume replace a checkpoint already in out_dir
    # wandb logging (imported only when on)
    wandb_log: bool = False  # log to Weights & Biases (needs `pip install wandb` and `wandb login`)
    wandb_project: str = ''  # '' = the dataset's name
    wandb_run_name: str = ''  # '' = out_dir's last component and attn, e.g. 'out-shakespeare-char-triton'
    wandb_group: str = ''  # '' = no group; runs that belong together (e.g. one comparison) share one
    # data
    dataset: str = 'shakespeare_char'  # data/<dataset>, made by its prepare.py
    data_dir: str = ''  # '' = data/<dataset> beside this file
    gradient_accumulation_steps: int = 1  # micro-steps per optimizer step, split across DDP ranks
    batch_size: int = 64  # micro-batch size, per rank
    block_size: int = 256  # context length
    # model (nanoGPT's baby GPT for characters)
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block; head dim = n_embd / n_head
    n_embd: int = 384  # width of the residual stream
    dropout: float = 0.2  # in [0, 1); 0 turns dropout off
    bias: bool = False  # biases in Linear and LayerNorm, like GPT-2
    gelu_approximate: str = 'none'  # the MLP's GELU: 'none' (exact) | 'tanh' (GPT-2's; init_from=gpt2 sets it)
    attn: str = 'triton'  # 'triton' | 'sdpa' | 'naive'
    # AdamW
    learning_rate: float = 1e-3  # peak learning rate, after warmup
    max_iters: int = 5000  # optimizer steps in all (a resumed run counts on from its checkpoint)
    weight_decay: float = 1e-1  # AdamW's, on the matrices (not biases or LayerNorm gains)
    beta1: float = 0.9  # AdamW's first-moment decay, in [0, 1)
    beta2: float = 0.95  # AdamW's second-moment decay, in [0, 1)
    grad_clip: float = 1.0  # clip gradients at this norm; 0.0 turns clipping off
    # learning rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True  # False: learning_rate throughout
    warmup_iters: int = 100  # linear warmup steps
    lr_decay_iters: int = 5000  # ~= max_iters per Chinchilla
    min_lr: float = 1e-4  # ~= learning_rate / 10 per Chinchilla
    # system
    backend: str = 'nccl'  # DDP backend: 'nccl' on GPUs, 'gloo' on CPU
    ddp_timeout: float = 300.0  # seconds a process waits for the others (a hung rank) before the run ends
    device: str = field(default_factory=lambda: 'cuda' if torch.cuda.is_available() else 'cpu')  # or 'cuda:N'
    dtype: str = 'auto'  # 'auto' | 'float32' | 'bfloat16' | 'float16'
    compile: bool = True  # torch.compile the model
    cudagraphs: bool = True  # with compile, on one CUDA GPU: replay each step as CUDA graphs (no launch overhead)
    seed: int = 1337  # initial weights, data order and dropout follow from it

    def __post_init__(self):
        """Every setting checked before any work starts: ConfigError names the key, its value and what is valid."""
        choices = {'attn': ATTN_IMPLS, 'backend': ('nccl', 'gloo'),
                   'dtype': ('auto', 'float32', 'bfloat16', 'float16')}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        hf_gpt2.check_init_from(self.init_from, own=('scratch', 'resume'))
        if self.eval_only and self.init_from == 'scratch':
            raise ConfigError("eval_only=True evaluates a trained model, and init_from='scratch' has none: add "
                              "--init_from=resume (out_dir's checkpoint) or a GPT-2 (--init_from=gpt2 or a directory)")
        # (key, valid?, the valid range in words); written so that NaN is never valid
        ranges = [(key, lambda v: v >= 1, '>= 1') for key in
                  ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps', 'batch_size')]
        ranges += [(key, lambda v: v >= 0, '>= 0') for key in ('max_iters', 'warmup_iters', 'lr_decay_iters')]
        # torch's generators take seeds below 2**64, and the eval and data-order seeds add to this one
        ranges += [('seed', lambda v: 0 <= v < 2**32, 'in [0, 2**32)')]
        ranges += [
            # AdamW applies it in float32, where a rate past 3.4e38 is an error, not a divergence; 1e6 is far past
            # any rate that trains
            ('learning_rate', lambda v: 0 < v <= 1e6, 'in (0, 1e6]'),
            ('min_lr', lambda v: 0 <= v < math.inf, '>= 0'),
            ('weight_decay', lambda v: 0 <= v < math.inf, '>= 0'),
            ('grad_clip', lambda v: 0 <= v < math.inf, '>= 0 (0 turns clipping off)'),
            ('beta1', lambda v: 0 <= v < 1, 'in [0, 1)'),
            ('beta2', lambda v: 0 <= v < 1, 'in [0, 1)'),
            # torch holds it in int64 nanoseconds: past 2**63 ns (9.2e9 s) the store's timeout wraps and every
            # process gives up at once
            ('ddp_timeout', lambda v: 0 < v <= 1e9, 'in (0, 1e9] seconds'),
            ('device', lambda v: re.fullmatch(r'cpu|cuda(:\d+)?', v), "'cpu', 'cuda' or 'cuda:N'"),
            ('out_dir', lambda v: v.strip() != '', 'a directory path'),
            ('dataset', lambda v: v.strip() != '' or self.data_dir, "a folder name under data/ (or give --data_dir)"),
        ]
        if self.decay_lr:  # the schedule rises to learning_rate, then decays to min_lr
            ranges += [('min_lr', lambda v: v <= self.learning_rate, f'<= learning_rate={self.learning_rate:g}'),
                       ('warmup_iters', lambda v: v <= self.lr_decay_iters,
                        f'<= lr_decay_iters={self.lr_decay_iters} (warmup ends before the decay does)')]
        for key, valid, allowed in ranges:
            if not valid(getattr(self, key)):
                raise ConfigError(f"{key} must be {allowed}, got {getattr(self, key)!r}")
        data_dir = self.data_dir or os.path.join(REPO_DIR, 'data', self.dataset)
        if os.path.realpath(self.out_dir) == os.path.realpath(data_dir):  # prepare.py then refuses the dataset
            raise ConfigError(f"out_dir is the dataset's directory ({self.out_dir}): give the run a directory of its "
                              f"own, e.g. --out_dir=out-{self.dataset}")
        try:
            model_config(self, vocab_size=GPTConfig.vocab_size)  # the model's own checks (n_embd % n_head, ...)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def model_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    return GPTConfig(**{k: getattr(cfg, k) for k in ARCH_KEYS + RUNTIME_KEYS}, vocab_size=vocab_size)


# ----------------------------------------------------------------------------------------------------------
# learning rate schedule

def get_lr(it: int, cfg: TrainConfig) -> float:
    """Linear warmup for warmup_iters, cosine decay to min_lr at lr_decay_iters, min_lr after that."""
    if not cfg.decay_lr:
        return cfg.learning_rate
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (it - cfg.warmup_iters) / (cfg.lr_decay_iters - cfg.warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------------------------------------
# the parts of a run, in the order train() calls them

@dataclass
class Processes:
    """This process's place in the run: its rank among world_size (1 without torchrun), device and precision."""
    ddp: bool  # started by torchrun
    rank: int
    local_rank: int
    world_size: int
    device: str  # 'cpu', 'cuda:N'
    device_type: str  # 'cpu' | 'cuda'
    dtype: str  # resolved: 'float32' | 'bfloat16' | 'float16'
    grad_accum: int  # micro-steps per optimizer step on this rank
    own_group: bool = False  # this run started the process group, so it ends it

    def __post_init__(self):
        self.autocast = autocast_context(self.device_type, self.dtype)  # one object, entered at every forward

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_processes(cfg: TrainConfig) -> Processes:
    """The checks that need the machine (device, dtype, attn), then the process group when torchrun started us."""
    device_type = 'cuda' if cfg.device.startswith('cuda') else 'cpu'
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available: use --device=cpu")
    if ':' in cfg.device and int(cfg.device.split(':')[1]) >= torch.cuda.device_count():
        raise ConfigError(f"device={cfg.device!r} but this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    dtype = resolve_dtype(cfg.dtype, device_type)
    try:
        check_attn_device(cfg.attn, device_type, dtype)
    except RuntimeError as e:
        cpu_hint = " Without a GPU, config/train_shakespeare_char_cpu.py trains a small model in minutes."
        raise ConfigError(str(e) + (cpu_hint if device_type == 'cpu' else '')) from None
    ddp = 'RANK' in os.environ  # started by torchrun, which sets RANK, LOCAL_RANK, WORLD_SIZE and MASTER_ADDR/PORT
    env = _torchrun_env() if ddp else {'LOCAL_RANK': 0, 'WORLD_SIZE': 1}
    world_size = env['WORLD_SIZE']
    if cfg.gradient_accumulation_steps % world_size != 0:
        raise ConfigError(f"gradient_accumulation_steps ({cfg.gradient_accumulation_steps}) must be divisible by "
                          f"the number of processes ({world_size}): each rank does gradient_accumulation_steps / "
                          f"{world_size}")
    grad_accum = cfg.gradient_accumulation_steps // world_size
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (the few outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if not ddp:
        return Processes(False, 0, 0, 1, cfg.device, device_type, dtype, grad_accum)

    import torch.distributed as dist
    if cfg.backend == 'nccl' and device_type != 'cuda':
        raise ConfigError(f"backend='nccl' needs CUDA and device is {cfg.device!r}: use --backend=gloo on the CPU")
    local_rank = env['LOCAL_RANK']
    device = f'cuda:{local_rank}' if device_type == 'cuda' else cfg.device
    if device_type == 'cuda':
        torch.cuda.set_device(device)
    own_group = not dist.is_initialized()
    if own_group:
        # the timeout bounds every collective: a hung rank ends the run (an error on each waiting rank) within
        # ddp_timeout instead of blocking the others for torch's default of 10 (nccl) or 30 (gloo) minutes
        try:
            dist.init_process_group(backend=cfg.backend, timeout=datetime.timedelta(seconds=cfg.ddp_timeout))
        except (RuntimeError, ValueError) as e:  # the store's timeout (DistStoreError is a RuntimeError), bad env
            raise TrainingError(f"rank {os.environ['RANK']} could not join the other processes "
                                f"({first_line(e, 160)}): start every process with torchrun, e.g. "
                                f"torchrun --nproc_per_node=2 train.py ...; if they start far apart, raise "
                                f"--ddp_timeout (now {cfg.ddp_timeout:g} s)") from None
    return Processes(True, dist.get_rank(), local_rank, dist.get_world_size(), device, device_type, dtype,
                     grad_accum, own_group)


def _torchrun_env() -> dict[str, int]:
    """RANK, LOCAL_RANK and WORLD_SIZE as torchrun sets them; ConfigError when one is missing or not a number (set
    by hand, or left over in the shell from another run)."""
    try:
        env = {k: int(os.environ[k]) for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE')}
    except (KeyError, ValueError):
        shown = ', '.join(f"{k}={os.environ.get(k, '(unset)')}" for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'))
        raise ConfigError(f"RANK is set, so this is one process of a distributed run, but {shown}: start it with "
                          f"torchrun (which sets all three), or unset RANK to train in one process") from None
    if not 0 <= env['RANK'] < env['WORLD_SIZE'] or env['LOCAL_RANK'] < 0:
        raise ConfigError(f"RANK={env['RANK']}, LOCAL_RANK={env['LOCAL_RANK']}, WORLD_SIZE={env['WORLD_SIZE']} do not "
                          f"describe a process of a distributed run: start it with torchrun, or unset RANK")
    return env


def end_processes(procs: Processes, finished: bool = False) -> None:
    """Leave the process group this process made. After a run every rank finished, first wait for the others:
    a rank that tore gloo down while another was still in its last steps (the master saving) sometimes aborted
    ("terminate called without an active exception"). After a failure, no wait: the others may never come."""
    if procs.own_group:
        import torch.distributed as dist
        if finished:
            dist.barrier()
            # The DDP wrapper holds the group too. train() drops it, but dead frames of earlier calls, in a
            # reference cycle, can keep train()'s frame and so the wrapper alive until a garbage collection: without
            # this one, often the one at interpreter exit, where tearing gloo down half-finalized sometimes aborted
            # the process. Not after a failure: freeing what the failed step left (a collective still waiting on a
            # dead peer) can block, and the launcher's SIGTERM then ends this process before its error line.
            gc.collect()
        dist.destroy_process_group()


@contextmanager
def explain_ddp_timeout(cfg: TrainConfig, procs: Processes):
    """A collective that timed out (ddp_timeout), or whose peer went away (a killed process: the backend reports
    a reset connection), becomes an error line on this rank saying what it means."""
    try:
        yield
    except RuntimeError as e:
        text = str(e).lower()
        lost = any(s in text for s in ('connection reset', 'connection closed', 'broken pipe'))
        if not procs.ddp or isinstance(e, TrainingError) or not (lost or 'timed out' in text):
            raise
        first = first_line(e, 160)
        if lost:
            raise TrainingError(f"rank {procs.rank} of {procs.world_size} lost its connection to another process "
                                f"({first}): that process died, and its own log says why") from e
        raise TrainingError(
            f"rank {procs.rank} of {procs.world_size} waited ddp_timeout={cfg.ddp_timeout:g} s for the other "
            f"processes ({first}): one of them is hung or died, and its own log says why. If a step, an eval or a "
            f"save legitimately takes that long, raise --ddp_timeout") from e


@contextmanager
def stop_on_sigterm(procs: Processes):
    """Under torchrun, SIGTERM is the launcher ending every process because one failed: end with an error line
    saying so (instead of dying without a word), through the usual clean-up."""
    if not procs.ddp:
        yield
        return

    def stop(signum, frame):
        raise TrainingError(f"rank {procs.rank} of {procs.world_size} was stopped by the launcher (SIGTERM): another "
                            f"process failed or hung; the first error in the log says why")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def lock_out_dir(out_dir: str):
    """Hold out_dir for the run's life: checks that it is writable, and that no other run is writing to it.
    The lock is an flock on out_dir/train.lock, which the OS drops when its process dies: a killed run leaves
    nothing behind that blocks the next one. (The file stays: deleting a lock file races with its next user.)"""
    there = os.path.abspath(out_dir)
    while not os.path.exists(there):  # out_dir, or the part of its path that exists and it would be made in
        there = os.path.dirname(there)
    if not os.path.isdir(there):
        what = 'is a file' if there == os.path.abspath(out_dir) else f'lies under {there}, which is a file'
        raise ConfigError(f"out_dir {out_dir!r} {what}, not a directory: choose another --out_dir")
    if os.path.isdir(os.path.join(out_dir, 'ckpt.pt')):
        raise ConfigError(f"{os.path.join(out_dir, 'ckpt.pt')} is a directory, where checkpoints are saved: move "
                          f"it out of the way, or choose another --out_dir")
    try:
        os.makedirs(out_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):  # what a checkpoint save does first: create a file there
            pass
        lock = open(os.path.join(out_dir, 'train.lock'), 'a+')
    except OSError as e:
        raise ConfigError(f"out_dir {out_dir!r} is not writable ({e.strerror or e}): fix its permissions or "
                          f"choose another --out_dir") from None
    with lock:
        if fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or 'a process'
                raise ConfigError(f"another training run ({holder}) is writing to {out_dir}: wait for it to end, "
                                  f"or use another --out_dir") from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def resume_from(cfg: TrainConfig, procs: Processes) -> tuple[TrainConfig, dict | None, bool]:
    """cfg with the architecture the checkpoint fixes, the checkpoint to resume from (None from scratch), and
    whether this run replaces another run's checkpoint in out_dir (--overwrite=True)."""
    if cfg.init_from != 'resume':
        replaces = os.path.exists(os.path.join(cfg.out_dir, 'ckpt.pt')) and not cfg.eval_only  # eval_only never saves
        if replaces:
            if not cfg.overwrite:
                raise ConfigError(f"{cfg.out_dir}/ckpt.pt holds a trained model, which this run (init_from="
                                  f"{cfg.init_from}) would replace: continue it with --init_from=resume, train into "
                                  f"another --out_dir, or replace it with --overwrite=True")
            if procs.master:
                print(f"note: --overwrite=True: this run's first save replaces {cfg.out_dir}/ckpt.pt, with its "
                      f"config.json and metrics.jsonl")
        return cfg, None, replaces
    ckpt = load_checkpoint(cfg.out_dir, procs.device)
    if ckpt['iter_num'] >= cfg.max_iters and not cfg.eval_only:
        raise ConfigError(f"max_iters={cfg.max_iters}, and the checkpoint in {cfg.out_dir} is at iteration "
                          f"{ckpt['iter_num']} already: raise --max_iters to train on, or evaluate it with "
                          f"--eval_only=True")
    # settings a checkpoint predates (nanoGPT's lack gelu_approximate) take GPTConfig's default, as its model does
    arch = {k: ckpt['model_args'].get(k, getattr(GPTConfig, k)) for k in ARCH_KEYS}
    changed = {k: v for k, v in arch.items() if getattr(cfg, k) != v}
    if changed and procs.master:
        print(f"resume: the architecture is the checkpoint's, using {changed}")
    # every other setting is this run's: name those that differ from the run that saved the checkpoint, so that a
    # resume without that run's config file (training on at the defaults) does not go unnoticed
    saved, ours = ckpt['config'] if isinstance(ckpt['config'], dict) else {}, dataclasses.asdict(cfg)
    expected = ARCH_KEYS + ('init_from', 'max_iters', 'overwrite', 'eval_only')  # or changed on purpose
    differ = [f"{k} {saved[k]!r} -> {v!r}" for k, v in ours.items()
              if k in saved and k not in expected and saved[k] != v]
    if differ and procs.master:
        print(f"resume: settings that differ from the checkpoint's run: {', '.join(differ)}")
    return dataclasses.replace(cfg, **arch), ckpt, False


def pretrained_weights(cfg: TrainConfig, procs: Processes) -> tuple[TrainConfig, dict | None]:
    """GPT-2's weights when init_from names them (hf_gpt2.load: a checkpoint-shaped dict without optimizer or
    random state; None otherwise), and cfg with the architecture they fix."""
    if cfg.init_from in ('scratch', 'resume'):
        return cfg, None
    weights = hf_gpt2.load(cfg.init_from, block_size=cfg.block_size)
    arch = {k: weights['model_args'][k] for k in ARCH_KEYS}
    changed = {k: v for k, v in arch.items() if getattr(cfg, k) != v}
    if changed and procs.master:
        print(f"init_from={cfg.init_from}: the architecture is the pretrained model's, using {changed}")
    return dataclasses.replace(cfg, **arch), weights


@dataclass
class Data:
    train: torch.Tensor  # (N,) int64 token ids on the device
    val: torch.Tensor  # (M,)
    meta: dict  # what the ids mean (utils.tokenizer_of); the checkpoint carries it
    vocab_size: int  # the model's


def open_data(cfg: TrainConfig, device: str, ckpt: dict | None) -> Data:
    """Both splits on the device, after checking that they are prepared, that the checkpoint (on resume, or GPT-2's
    weights) was trained on tokens that mean the same, and that every token id fits the model's vocabulary."""
    data_dir = cfg.data_dir or os.path.join(REPO_DIR, 'data', cfg.dataset)
    folders = [f for f in ('train.bin', 'val.bin', 'meta.pkl') if os.path.isdir(os.path.join(data_dir, f))]
    if folders:
        raise ConfigError(f"{' and '.join(folders)} in {data_dir} is a directory, not a data file: move it away, "
                          f"then {prepare_hint(data_dir)}")
    missing = [f for f in ('train.bin', 'val.bin', 'meta.pkl') if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found in {data_dir}: {prepare_hint(data_dir)}")
    meta = read_meta(data_dir)
    if ckpt is not None:
        source = ckpt.get('source', f'{cfg.out_dir}/ckpt.pt')  # hf_gpt2.load says where GPT-2's weights came from
        vocab_size = ckpt['model_args']['vocab_size']
        ckpt_meta = ckpt.get('meta')
        if 'meta' not in ckpt:  # nanoGPT's checkpoints record no vocabulary: the data's, if its size fits the model
            fits = (meta['vocab_size'] == vocab_size if tokenizer_of(meta) == 'char' else vocab_size >= 50257)
            if not fits:
                raise ConfigError(f"the checkpoint {source} records no vocabulary (nanoGPT's do not) and its model "
                                  f"has {vocab_size} token ids, which the data {data_dir} ({describe_meta(meta)}) "
                                  f"does not fit: train on the dataset it was trained on (--data_dir, --dataset)")
            ckpt_meta = meta
        mismatch = meta_mismatch(ckpt_meta, meta, f'the checkpoint {source}', f'the data {data_dir}')
        if mismatch:
            raise ConfigError(f"{mismatch}: train on data with the checkpoint's tokens (--data_dir, --dataset), "
                              f"or train from scratch into another --out_dir")
        blame = None
        if tokenizer_of(ckpt_meta) == 'gpt2' and vocab_size < 50257:  # a small model said to speak GPT-2 BPE
            blame = (f"the model from {source} has only {vocab_size} token ids; train it on data whose ids fit, or, "
                     f"for a character model, put its meta.pkl beside its config.json (hf_gpt2.py export writes it)")
    else:
        # GPT-2 BPE gets GPTConfig's default, GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
        vocab_size = meta['vocab_size'] if tokenizer_of(meta) == 'char' else GPTConfig.vocab_size
        blame = None
    splits = {split: load_tokens(data_dir, split, device, vocab_size, blame) for split in ('train', 'val')}
    for split, tokens in splits.items():
        if len(tokens) <= cfg.block_size:
            raise ConfigError(f"the {split} split has {len(tokens)} tokens, not more than block_size={cfg.block_size}: "
                              f"lower --block_size, or prepare a longer text into {data_dir}")
    return Data(splits['train'], splits['val'], meta, vocab_size)


def get_batch(tokens: torch.Tensor, batch_size: int, offsets: torch.Tensor,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of len(offsets) tokens, and the same shifted by one (the targets)."""
    # gathered on the device: a few kernel launches, no host work, no sync
    ix = torch.randint(len(tokens) - len(offsets), (batch_size, 1), device=tokens.device, generator=gen)  # (B, 1)
    x = tokens[ix + offsets]  # (B, T)
    y = tokens[ix + 1 + offsets]  # (B, T)
    return x, y


class RunLog:
    """Where a run's figures go, on the master only: stdout, out_dir/metrics.jsonl and W&B (when wandb_log is
    on). metrics.jsonl has one JSON object per iteration that evaluated or logged (a scratch run starts it
    afresh, resume appends): iter, lr, elapsed_s; at an eval train/loss and val/loss; at a log step
    train/step_loss, grad_norm, ms_per_iter, tokens_per_sec, mfu and eta_s. W&B gets the same, once per such
    iteration, with step=iter.

    out_dir's config.json and metrics.jsonl go with its checkpoint: config.json is written at each save, and a run
    that replaces another run's checkpoint (replaces: --overwrite=True) holds its rows until its first save, so a
    run that fails before it leaves the other run's three files as they were. A resumed run (resumes_at: its
    checkpoint's iteration) first drops the rows from that iteration on: they tell of steps after the save, which
    it takes again (the saving run went on past it; an earlier resume may have failed before saving), so each
    iteration has one row."""

    def __init__(self, cfg: TrainConfig, master: bool, replaces: bool, resumes_at: int | None):
        self.master, self.wandb, self.metrics, self.held = master, None, None, None
        if not master:
            return
        if cfg.wandb_log:
            self.wandb = start_wandb(cfg)
        print(textwrap.fill(' '.join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)),
                            width=118, initial_indent='config: ', subsequent_indent='  ', break_long_words=False,
                            break_on_hyphens=False))
        self.config, self.out_dir = dataclasses.asdict(cfg), cfg.out_dir
        self.path = os.path.join(cfg.out_dir, 'metrics.jsonl')
        # a scratch run replaces the file along with the checkpoint; resume (and a look with eval_only) add to it
        self.mode = 'a' if cfg.init_from == 'resume' or cfg.eval_only else 'w'
        self.held = [] if replaces else None  # rows not yet written, while the checkpoint is another run's
        self.resumes_at = resumes_at

    def _append(self, lines: list[str]) -> None:
        if self.metrics is None:  # opened at the first row: a run that fails before one leaves no file behind
            if self.resumes_at is not None and os.path.isfile(self.path):
                self._drop_rows_from(self.resumes_at)
            self.metrics = open(self.path, self.mode)
        self.metrics.writelines(lines)
        self.metrics.flush()

    def _drop_rows_from(self, iter_num: int) -> None:
        """Rewrite metrics.jsonl without its rows from iter_num on (and any line that is not a row: a run killed
        mid-write leaves half of one)."""
        def before(line: str) -> bool:
            try:
                return json.loads(line)['iter'] < iter_num
            except (ValueError, TypeError, KeyError):
                return False

        with open(self.path, errors='replace') as f:
            lines = f.readlines()
        kept = [line.rstrip('\n') + '\n' for line in lines if before(line)]

        def write(tmp: str) -> None:
            with open(tmp, 'w') as f:
                f.writelines(kept)

        if kept != lines:
            replace_file(self.path, write)

    def saved(self) -> None:
        """After a checkpoint save: config.json names the settings that trained it, and a replacing run's rows
        start metrics.jsonl."""
        if not self.master:
            return
        path = os.path.join(self.out_dir, 'config.json')

        def write(tmp: str) -> None:
            with open(tmp, 'w') as f:
                json.dump(self.config, f, indent=1)

        try:
            replace_file(path, write)  # never a half-written config.json
        except OSError as e:  # as save_checkpoint's: a full disk, a file system gone read-only
            raise CheckpointError(f"could not write {path} ({e.strerror or e}) after saving the checkpoint: free "
                                  f"space or fix the directory, then continue with --init_from=resume") from None
        if self.held is not None:
            lines, self.held = self.held, None
            self._append(lines)

    def print(self, *args) -> None:
        if self.master:
            print(*args)

    def write(self, iter_num: int, row: dict) -> None:
        """One iteration's figures, once, to the metrics file and W&B (nothing when the iteration has none)."""
        if not (self.master and row):
            return
        line = json.dumps({'iter': iter_num, **row}) + '\n'
        if self.held is not None:
            self.held.append(line)
        else:
            self._append([line])
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if v is not None}, step=iter_num)

    def close(self, ok: bool) -> None:
        if self.held is not None:
            print(f"note: this run saved no checkpoint, so {self.out_dir} keeps the checkpoint, config.json and "
                  f"metrics.jsonl of the run it would have replaced; this run's figures are the lines above")
        if self.metrics is not None:
            self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=0 if ok else 1)


def start_wandb(cfg: TrainConfig):
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb_log=True but wandb is not installed: pip install wandb, "
                          "or --wandb_log=False") from None
    name = cfg.wandb_run_name or f"{os.path.basename(os.path.normpath(cfg.out_dir))}-{cfg.attn}"
    try:
        wandb.init(project=cfg.wandb_project or cfg.dataset, name=name, group=cfg.wandb_group or None,
                   config=dataclasses.asdict(cfg))
    except Exception as e:  # not logged in, no network, a bad entity: wandb raises several kinds
        raise ConfigError(f"W&B could not start ({type(e).__name__}: {first_line(e)}): log in with `wandb login`, "
                          f"or set WANDB_MODE=offline to log to local files, or turn it off with "
                          f"--wandb_log=False") from None
    return wandb


def check_model_fits(cfg: TrainConfig, vocab_size: int, procs: Processes) -> None:
    """Refuse, before building it, a model whose fp32 weights, gradients and two AdamW moments (16 bytes a
    parameter) alone exceed the device's memory: building one takes minutes before it fails, or the OS kills the
    process without a word."""
    params = 12 * cfg.n_layer * cfg.n_embd ** 2 + (vocab_size + cfg.block_size) * cfg.n_embd  # blocks, embeddings
    if procs.device_type == 'cuda':
        have = torch.cuda.get_device_properties(procs.device).total_memory
    elif hasattr(os, 'sysconf') and 'SC_PHYS_PAGES' in os.sysconf_names:
        have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    else:
        return  # no way to ask: the allocator's own error will have to do
    if 16 * params > have:
        raise ConfigError(f"n_layer={cfg.n_layer}, n_embd={cfg.n_embd} makes about {params / 1e9:,.1f}B parameters, "
                          f"whose weights, gradients and AdamW state alone need {16 * params / 2**30:,.0f} GiB, and "
                          f"this {procs.device_type} has {have / 2**30:,.0f} GiB: make the model smaller")


def build_model(cfg: TrainConfig, ckpt: dict | None, weights: dict | None, vocab_size: int, procs: Processes):
    """The model (from the checkpoint to resume, from pretrained weights, or freshly initialized), its optimizer
    and loss scaler."""
    if ckpt is not None or weights is not None:
        model = model_from_checkpoint(ckpt or weights, attn=cfg.attn, dropout=cfg.dropout)
    else:
        torch.manual_seed(cfg.seed)  # the same seed on every rank and for every attn: identical initial weights
        model = GPT(model_config(cfg, vocab_size))
    model.to(procs.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                           procs.device_type)
    scaler = torch.amp.GradScaler('cuda', enabled=(procs.dtype == 'float16'))  # a no-op unless float16
    if ckpt is not None and ckpt.get('optimizer'):
        # this run's settings, not the checkpoint's: betas and weight decay are settings like the learning rate
        # (which each step sets), and config.json records them; a checkpoint from a GPU must not turn on the fused
        # CUDA kernel in a CPU run
        fresh = [{k: g[k] for k in ('fused', 'foreach', 'betas', 'weight_decay')} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(ckpt['optimizer'])
            # load_state_dict matches parameters by count and order, not shape: AdamW's moments must fit each one
            for p, state in optimizer.state.items():
                for name, t in state.items():
                    if name != 'step' and isinstance(t, torch.Tensor) and t.shape != p.shape:
                        raise ValueError(f"{name} of shape {tuple(t.shape)} for a parameter of shape {tuple(p.shape)}")
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt['source']} holds optimizer state that does not fit its model "
                                  f"({type(e).__name__}: {str(e)[:200]}): restore it from a copy") from None
        for g, keep in zip(optimizer.param_groups, fresh):
            g.update(keep)
        if ckpt.get('scaler') and scaler.is_enabled():  # float16's loss scale; other dtypes save an empty state
            scaler.load_state_dict(ckpt['scaler'])
    elif ckpt is not None and procs.master:
        # a checkpoint stripped for sharing, or nanoGPT's: the weights go on, AdamW's moments start from zero
        print(f"resume: {ckpt['source']} holds no optimizer state: AdamW starts afresh from its weights")
    return model, optimizer, scaler


def compile_and_wrap(model: GPT, cfg: TrainConfig, procs: Processes, log: RunLog):
    """(the model a training step runs, the model evaluation runs, whether steps replay as CUDA graphs)."""
    # A small model's step is hundreds of short kernels: launching them from Python costs more than running
    # them, so on one GPU the compiled step is captured as CUDA graphs ('reduce-overhead') and replayed.
    # Not under DDP, whose gradient all-reduce runs from autograd hooks outside any graph. Not with several
    # micro-steps per optimizer step either: each micro-step's backward replays the same graph, whose outputs
    # (the gradients to add up, the tied embedding's included) the next replay overwrites.
    micro_steps = cfg.gradient_accumulation_steps // procs.world_size
    cudagraphs = (cfg.compile and cfg.cudagraphs and procs.device_type == 'cuda' and not procs.ddp
                  and micro_steps == 1)
    if cfg.compile:
        log.print(f"compiling the model{' with CUDA graphs' if cudagraphs else ''}... (takes a minute)")
        model = torch.compile(model, mode='reduce-overhead' if cudagraphs else None)
    eval_model = model  # evaluated outside DDP: only the master evaluates, and DDP's forward expects every rank
    if procs.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[procs.local_rank] if procs.device_type == 'cuda' else None,
                    broadcast_buffers=False)
    return model, eval_model, cudagraphs


def random_state(train_gen: torch.Generator, procs: Processes) -> list[dict]:
    """Every rank's random state, gathered on each rank (the master saves it): the data order (train_gen) and
    the default generators dropout draws from (torch's CPU one, and the GPU's)."""
    state = {'torch': torch.get_rng_state(), 'data': train_gen.get_state()}
    if procs.device_type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(procs.device)
    if not procs.ddp:
        return [state]
    import torch.distributed as dist
    states = [None] * procs.world_size
    dist.all_gather_object(states, state)
    return states


def seed_random_state(cfg: TrainConfig, ckpt: dict | None, procs: Processes, iter_num: int,
                      log: RunLog) -> torch.Generator:
    """Seed (from scratch) or restore (on resume) the random state; returns the data-order generator."""
    train_gen = torch.Generator(device=procs.device)
    saved = (ckpt or {}).get('rng')
    if saved is not None and len(saved) == procs.world_size:
        # exactly where the saved run was: N iterations + resume M are N + M straight
        state = saved[procs.rank]
        try:
            torch.set_rng_state(state['torch'].cpu())
            if procs.device_type == 'cuda' and 'cuda' in state:
                torch.cuda.set_rng_state(state['cuda'].cpu(), procs.device)
            train_gen.set_state(state['data'].cpu())
        except (KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {ckpt['source']} holds a random state this torch cannot restore "
                                  f"({type(e).__name__}: {first_line(e, 160)}): restore it from a copy"
                                  ) from None
        return train_gen
    if ckpt is not None:
        log.print(f"resume: the checkpoint has no random state for {procs.world_size} process(es): data order "
                  f"and dropout are reseeded from the iteration, so this run is not bit-identical to one that "
                  f"never stopped")
    # dropout draws from the global generator: differ per rank so ranks do not drop the same units
    torch.manual_seed(cfg.seed + procs.rank)
    # data order: a generator of its own per rank, so the same seed gives the same batches whatever attn is;
    # seeded from the iteration too, so a resumed run does not replay its first batches
    train_gen.manual_seed(cfg.seed + procs.rank + procs.world_size * iter_num)
    return train_gen


@torch.no_grad()
def estimate_loss(model, data: Data, cfg: TrainConfig, procs: Processes, cudagraphs: bool) -> dict[str, float]:
    """Mean loss over eval_iters batches of each split: the same batches at every eval (a generator reseeded
    each time), comparable across evals and runs, and evaluating never shifts the training data order."""
    gen = torch.Generator(device=procs.device).manual_seed(cfg.seed + EVAL_SEED_OFFSET)
    offsets = torch.arange(cfg.block_size, device=procs.device)  # (T,)
    model.eval()
    out = {}
    for split, tokens in (('train', data.train), ('val', data.val)):
        losses = torch.zeros(cfg.eval_iters, device=procs.device)
        for k in range(cfg.eval_iters):
            X, Y = get_batch(tokens, cfg.batch_size, offsets, gen)
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are no longer needed
            with procs.autocast:
                _, loss = model(X, Y)
            losses[k] = loss
        out[split] = losses.mean().item()
    model.train()
    return out


def evaluate(model, data: Data, cfg: TrainConfig, procs: Processes, cudagraphs: bool, iter_num: int,
             log: RunLog) -> dict[str, float]:
    """The master's eval at iter_num: the losses, printed, and checked to be finite before anything is saved."""
    losses = estimate_loss(model, data, cfg, procs, cudagraphs)
    log.print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    # Guessing every token equally likely scores ln(vocab_size); a model at twice that has not learned worse, it
    # has blown up (a too-high learning rate sends the loss to thousands long before it reaches inf), and saving
    # it, as always_save_checkpoint would, would replace a good checkpoint. At least 2 nats above the guess: with a
    # vocabulary of a few tokens twice the guess is within reach of an untrained model (1.42 against 1.39 at 2 tokens).
    uniform = math.log(data.vocab_size)
    limit = max(2 * uniform, uniform + 2)
    if not all(math.isfinite(v) and v <= limit for v in losses.values()):
        raise TrainingError(f"training diverged before iter {iter_num}: the eval losses are {losses}, above "
                            f"{limit:.2f}, far above the {uniform:.2f} of guessing uniformly. "
                            f"{diverged_advice(cfg, procs)}")
    return losses


def train_step(model, raw_model: GPT, optimizer, scaler, next_batch, cfg: TrainConfig, procs: Processes,
               cudagraphs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step over grad_accum micro-batches. Returns the last micro-batch's loss (divided by
    grad_accum) and the gradient norm before clipping (None without clipping), as device tensors: no host sync."""
    for micro_step in range(procs.grad_accum):
        X, Y = next_batch()  # (B, T), (B, T)
        if procs.ddp:
            # all-reduce the gradients only on the last micro-step
            model.require_backward_grad_sync = (micro_step == procs.grad_accum - 1)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are no longer needed
        with procs.autocast:
            _, loss = model(X, Y)
            loss = loss / procs.grad_accum  # the gradients add up over micro-steps: average them
        scaler.scale(loss).backward()
    norm = None
    if cfg.grad_clip != 0.0:
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss, norm


def read_loss(loss: torch.Tensor, norm: torch.Tensor | None, iter_num: int, cfg: TrainConfig, procs: Processes,
              scaler) -> tuple[float, float | None]:
    """The step's loss and gradient norm as floats, on a log step: the only host sync of a training step. Stops
    the run when either is NaN or inf; under DDP every rank reads them, and all agree to stop together."""
    values = torch.stack([loss.detach().float()] + ([norm.float()] if norm is not None else [])).tolist()
    lossf, normf = values[0] * procs.grad_accum, (values[1] if norm is not None else None)
    # with float16 an inf gradient is the loss scaler's business: it skips that step and lowers the scale
    bad = not all(map(math.isfinite, [lossf] if scaler.is_enabled() else values))
    if procs.ddp:
        import torch.distributed as dist
        flag = torch.tensor([float(bad)], device=procs.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = flag.item() > 0
    if bad:
        raise TrainingError(f"training diverged at iter {iter_num}: loss {lossf}, gradient norm {normf} (on rank "
                            f"{procs.rank}; every rank stopped). {diverged_advice(cfg, procs)}")
    return lossf, normf


def diverged_advice(cfg: TrainConfig, procs: Processes) -> str:
    """What a diverged run kept, and what to try next."""
    tries = [f"a lower --learning_rate (now {cfg.learning_rate:g})",
             f"a lower --grad_clip (now {cfg.grad_clip:g})" if cfg.grad_clip else "--grad_clip=1.0 (now off)",
             f"a longer --warmup_iters (now {cfg.warmup_iters})"]
    if procs.dtype != 'float32':
        tries.append(f"--dtype={'bfloat16 or float32' if procs.dtype == 'float16' else 'float32'} (now {procs.dtype})")
    return (f"The last checkpoint in {cfg.out_dir}, if any, was saved before this and is left as it is. "
            f"Try {', '.join(tries[:-1])} or {tries[-1]}")


class Throughput:
    """The timing window between log lines and every speed figure made from it: ms/iter, tokens/s, MFU,
    elapsed and time left. Evals and saves are not training time: restart() opens a new window after them.
    A window that holds this process's first step (compilation, warm-up) is left out of the timings."""

    def __init__(self, tokens_per_iter: int, flops_per_iter: float, peak_flops: float | None, max_iters: int):
        self.tokens_per_iter, self.flops_per_iter, self.peak_flops = tokens_per_iter, flops_per_iter, peak_flops
        self.max_iters = max_iters
        self.start = time.perf_counter()
        self.steps = 0  # in this process
        self.timings = []  # (iter, ms/iter) per steady-state window
        self.restart()

    def restart(self) -> None:
        self.t0, self.iters, self.cold = time.perf_counter(), 0, self.steps == 0

    def tick(self) -> None:
        self.iters += 1
        self.steps += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def rates(self, ms: float | None) -> dict:
        return {'ms_per_iter': ms,
                'tokens_per_sec': self.tokens_per_iter / (ms / 1000) if ms else None,
                'mfu': self.flops_per_iter / (ms / 1000) / self.peak_flops if (ms and self.peak_flops) else None}

    def read(self, iter_num: int) -> dict:
        """At a log step (after iteration iter_num): the window's figures; starts the next window."""
        now = time.perf_counter()
        ms = (now - self.t0) * 1000 / self.iters
        if not self.cold:
            self.timings.append((iter_num, ms))
        self.t0, self.iters, self.cold = now, 0, False
        return {**self.rates(ms), 'elapsed_s': now - self.start,
                'eta_s': (self.max_iters - iter_num - 1) * ms / 1000}  # at this window's rate

    def summary(self) -> dict:
        """The median over steady-state windows (None when there were none)."""
        return self.rates(float(np.median([ms for _, ms in self.timings])) if self.timings else None)


def progress_line(iter_num: int, max_iters: int, row: dict) -> str:
    def clock(s: float) -> str:  # h:mm:ss, or days past timedelta's billion (an absurd max_iters)
        return str(datetime.timedelta(seconds=round(s))) if s < 8.64e13 else f"{s / 86400:.3g} days"

    mfu = f", mfu {row['mfu'] * 100:.1f}%" if row['mfu'] is not None else ""
    return (f"iter {iter_num}/{max_iters}: loss {row['train/step_loss']:.4f}, lr {row['lr']:.2e}, "
            f"{row['ms_per_iter']:.2f} ms/iter, {row['tokens_per_sec']:,.0f} tok/s{mfu}, "
            f"elapsed {clock(row['elapsed_s'])}, left {clock(row['eta_s'])}")


def checkpoint(raw_model: GPT, optimizer, scaler, iter_num: int, best_val_loss: float, cfg: TrainConfig,
               data: Data, rng: list[dict]) -> dict:
    return {
        'model': raw_model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scaler': scaler.state_dict(),
        'model_args': dataclasses.asdict(raw_model.config),
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'config': dataclasses.asdict(cfg),
        'meta': data.meta,  # what the token ids mean: sample.py decodes with it, resume checks the data against it
        'rng': rng,  # every rank's random state: resume continues exactly
    }


# ----------------------------------------------------------------------------------------------------------
# training

def train(cfg: TrainConfig) -> dict:
    """Run one training job as cfg describes. Returns, on the master process, a summary:

      iter_num, best_val_loss, val_loss, train_loss (last eval), losses [(iter, train, val), ...],
      timings [(iter, ms/iter), ...] (one entry per log window: wall time of the window / iterations in it,
      synchronized by the loss read of the log line; evals and the first window, with compilation, are
      left out), ms_per_iter (median of timings), tokens_per_sec, mfu (None when the GPU's peak is unknown),
      tokens_per_iter, num_params, peak_mem_bytes (CUDA only), device, dtype, attn.
    Other DDP ranks return {}.
    """
    procs = setup_processes(cfg)
    ok = False
    try:
        with ExitStack() as stack:
            stack.enter_context(explain_ddp_timeout(cfg, procs))
            stack.enter_context(stop_on_sigterm(procs))
            if procs.master:
                if cfg.init_from == 'resume':
                    checkpoint_path(cfg.out_dir)  # no checkpoint: said before the lock makes out_dir and its file
                stack.enter_context(lock_out_dir(cfg.out_dir))
            cfg, ckpt, replaces = resume_from(cfg, procs)
            cfg, weights = pretrained_weights(cfg, procs)
            data = open_data(cfg, procs.device, ckpt or weights)
            check_model_fits(cfg, data.vocab_size, procs)
            # only now: a run refused above leaves out_dir as it was
            log = RunLog(cfg, procs.master, replaces, ckpt['iter_num'] if ckpt and not cfg.eval_only else None)
            stack.callback(lambda: log.close(ok))
            tokens_per_iter = cfg.gradient_accumulation_steps * cfg.batch_size * cfg.block_size
            log.print(f"device {procs.device} ({device_name(procs)}), dtype {procs.dtype}, attn {cfg.attn}, "
                      f"{procs.world_size} process(es), tokens per iteration {tokens_per_iter:,}")
            raw_model, optimizer, scaler = build_model(cfg, ckpt, weights, data.vocab_size, procs)
            num_params = raw_model.get_num_params()
            log.print(f"number of parameters: {num_params / 1e6:.2f}M")
            model, eval_model, cudagraphs = compile_and_wrap(raw_model, cfg, procs, log)
            iter_num, best_val_loss = (ckpt['iter_num'], ckpt['best_val_loss']) if ckpt else (0, float('inf'))
            first_iter = iter_num
            train_gen = seed_random_state(cfg, ckpt, procs, iter_num, log)
            ckpt = weights = None  # free the loaded tensors
            offsets = torch.arange(cfg.block_size, device=procs.device)  # (T,)
            next_batch = lambda: get_batch(data.train, cfg.batch_size, offsets, train_gen)  # noqa: E731
            timer = Throughput(tokens_per_iter, raw_model.flops_per_token() * tokens_per_iter,
                               peak_flops(procs, log), cfg.max_iters)
            history, last_eval = [], {}  # (iter, train loss, val loss) at each eval; the last eval's losses
            if iter_num >= cfg.max_iters and not cfg.eval_only:
                log.print(f"note: max_iters={cfg.max_iters}: nothing to train; the model is evaluated once and "
                          f"nothing is saved (raise --max_iters to train)")
            while True:
                lr = get_lr(iter_num, cfg)
                for g in optimizer.param_groups:
                    g['lr'] = lr
                row = {}  # this iteration's figures, for metrics.jsonl and W&B
                if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
                    # every rank's random state, gathered by all of them, for the master to save (once this
                    # run has trained: a resumed run's first eval has nothing new to save)
                    rng = random_state(train_gen, procs) if iter_num > first_iter and not cfg.eval_only else None
                    if procs.master:
                        last_eval = evaluate(eval_model, data, cfg, procs, cudagraphs, iter_num, log)
                        history.append((iter_num, last_eval['train'], last_eval['val']))
                        row |= {'train/loss': last_eval['train'], 'val/loss': last_eval['val'], 'lr': lr,
                                'elapsed_s': timer.elapsed()}
                        if last_eval['val'] < best_val_loss or cfg.always_save_checkpoint:
                            best_val_loss = min(best_val_loss, last_eval['val'])
                            if rng is not None:
                                save_checkpoint(checkpoint(raw_model, optimizer, scaler, iter_num, best_val_loss,
                                                           cfg, data, rng), cfg.out_dir)
                                log.saved()
                                log.print(f"saved checkpoint to {cfg.out_dir}")
                    timer.restart()  # the eval and the save are not training time
                if iter_num >= cfg.max_iters or cfg.eval_only:
                    log.write(iter_num, row)
                    break
                loss, norm = train_step(model, raw_model, optimizer, scaler, next_batch, cfg, procs, cudagraphs)
                timer.tick()
                if iter_num % cfg.log_interval == 0:
                    lossf, normf = read_loss(loss, norm, iter_num, cfg, procs, scaler)
                    row |= {'train/step_loss': lossf, 'grad_norm': normf, 'lr': lr, **timer.read(iter_num)}
                    log.print(progress_line(iter_num, cfg.max_iters, row))
                log.write(iter_num, row)
                iter_num += 1
            model = None  # the DDP wrapper: end_processes frees it before the group it holds
            ok = True
    finally:
        end_processes(procs, ok)
    if not procs.master:
        return {}
    return {
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'train_loss': last_eval.get('train'),
        'val_loss': last_eval.get('val'),
        'losses': history,
        'timings': timer.timings,
        **timer.summary(),  # ms_per_iter, tokens_per_sec, mfu
        'tokens_per_iter': tokens_per_iter,
        'num_params': num_params,
        'peak_mem_bytes': torch.cuda.max_memory_allocated(procs.device) if procs.device_type == 'cuda' else None,
        'device': procs.device,
        'dtype': procs.dtype,
        'attn': cfg.attn,
    }


def device_name(procs: Processes) -> str:
    return torch.cuda.get_device_name(procs.device) if procs.device_type == 'cuda' else 'cpu'


def peak_flops(procs: Processes, log: RunLog) -> float | None:
    """The GPU's dense bf16 peak, for MFU; None (no MFU) on the CPU, for an unknown GPU, or with float32."""
    if procs.device_type != 'cuda':
        return None
    name = torch.cuda.get_device_name(procs.device)
    peak = gpu_peak_flops(name) if procs.dtype != 'float32' else None  # an fp32 run would read as tiny
    if peak is None:
        log.print(f"MFU not reported: no bf16 peak known for {name} with dtype {procs.dtype}")
    return peak


SMALLER = ("lower --batch_size (and raise --gradient_accumulation_steps to keep the tokens per step), --eval_iters, "
           "--block_size or the model's size")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    cfg = None
    try:
        cfg = parse_config(argv, TrainConfig)
        train(cfg)
    except (ConfigError, CheckpointError, FileNotFoundError, TrainingError) as e:
        sys.exit(f"error: {e}")
    except (RuntimeError, MemoryError) as e:
        where = out_of_memory(e)
        if not where:  # anything else is a bug, with its traceback
            raise
        sys.exit(f"error: the {where} ran out of memory ({first_line(e, 160)}): {SMALLER}")
    except KeyboardInterrupt:
        path = os.path.join(cfg.out_dir, 'ckpt.pt') if cfg else ''
        if not os.path.isfile(path):
            sys.exit(f"interrupted: no checkpoint was saved{' in ' + cfg.out_dir if cfg else ''}")
        sys.exit(f"interrupted: {path} is complete (saves are atomic, and one cut short leaves the last): continue "
                 f"from it with --init_from=resume")


if __name__ == '__main__':
    main()
