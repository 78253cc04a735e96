"""
Train a GPT. One GPU, or several through torchrun, or the CPU.

    python train.py config/train_shakespeare_char.py --batch_size=32 --attn=sdpa
    torchrun --standalone --nproc_per_node=4 train.py config/train_shakespeare_char.py

A config file is plain Python assignments to the names in TrainConfig; --key=value on the command line
overrides it. Importing this module does nothing: the entry points are train(TrainConfig) and main(argv).
"""

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

import hf_gpt2
from model import ATTN_IMPLS, GPT, GPTConfig, check_attn_device
from utils import (REPO_DIR, CheckpointError, ConfigError, autocast_context, gpu_peak_flops, load_checkpoint,
                   load_tokens, model_from_checkpoint, parse_config, read_meta, resolve_dtype, save_checkpoint)

ARCH_KEYS = ('n_layer', 'n_head', 'n_embd', 'block_size', 'bias')  # fixed by a checkpoint; resume takes its values


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = 'out'
    eval_interval: int = 2000
    log_interval: int = 1
    eval_iters: int = 200
    eval_only: bool = False  # evaluate once, then exit
    always_save_checkpoint: bool = True  # save at every eval, not only when val loss improves
    init_from: str = 'scratch'  # 'scratch' | 'resume' (out_dir/ckpt.pt) | 'gpt2'...'gpt2-xl' | a Hugging Face GPT-2 dir
    # wandb logging (imported only when on)
    wandb_log: bool = False
    wandb_project: str = 'owt'
    wandb_run_name: str = 'gpt2'
    # data
    dataset: str = 'openwebtext'
    data_dir: str = ''  # '' = data/<dataset> beside this file
    gradient_accumulation_steps: int = 5 * 8  # micro-steps per optimizer step, split across DDP ranks
    batch_size: int = 12  # micro-batch size, per rank
    block_size: int = 1024
    # model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    attn: str = 'triton'  # 'triton' | 'sdpa' | 'naive'
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # clip gradients at this norm; 0.0 turns clipping off
    # learning rate schedule: linear warmup, then cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 2000
    lr_decay_iters: int = 600000  # ~= max_iters per Chinchilla
    min_lr: float = 6e-5  # ~= learning_rate / 10 per Chinchilla
    # system
    backend: str = 'nccl'  # DDP backend: 'nccl' on GPUs, 'gloo' on CPU
    device: str = field(default_factory=lambda: 'cuda' if torch.cuda.is_available() else 'cpu')
    dtype: str = 'auto'  # 'auto' | 'float32' | 'bfloat16' | 'float16'
    compile: bool = True  # torch.compile the model
    cudagraphs: bool = True  # with compile, on one CUDA GPU: replay each step as CUDA graphs (no launch overhead)
    seed: int = 1337

    def __post_init__(self):
        choices = {'attn': ATTN_IMPLS, 'dtype': ('auto', 'float32', 'bfloat16', 'float16')}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        hf_gpt2.check_init_from(self.init_from, own=('scratch', 'resume'))
        for key in ('eval_interval', 'log_interval', 'eval_iters', 'gradient_accumulation_steps',
                    'batch_size', 'block_size'):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")


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
# training

def train(cfg: TrainConfig) -> dict:
    """Run one training job as cfg describes. Returns, on the master process, a summary:

      iter_num, best_val_loss, val_loss, train_loss (last eval), losses [(iter, train, val), ...],
      timings [(iter, ms/iter), ...] (one entry per log window: wall time of the window / iterations in it,
      synchronized by the loss.item() of the log line; evals and the first window, with compilation, are
      left out), ms_per_iter (median of timings), tokens_per_sec, mfu (None when the GPU's peak is unknown),
      tokens_per_iter, num_params, peak_mem_bytes (CUDA only), device, dtype, attn.
    Other DDP ranks return {}.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    # -------- processes and devices
    ddp = int(os.environ.get('RANK', -1)) != -1  # started by torchrun?
    device = cfg.device
    own_process_group = False
    if ddp:
        if cfg.backend == 'nccl' and not device.startswith('cuda'):
            raise ConfigError(f"backend='nccl' needs CUDA and device is {device!r}: use --backend=gloo on the CPU")
        if not dist.is_initialized():
            dist.init_process_group(backend=cfg.backend)
            own_process_group = True
        rank, local_rank, world_size = dist.get_rank(), int(os.environ['LOCAL_RANK']), dist.get_world_size()
        if device.startswith('cuda'):
            device = f'cuda:{local_rank}'
            torch.cuda.set_device(device)
    else:
        rank, world_size = 0, 1
    master = rank == 0
    grad_accum = cfg.gradient_accumulation_steps
    if grad_accum % world_size != 0:
        raise ConfigError(f"gradient_accumulation_steps ({grad_accum}) must be divisible by the number of "
                          f"processes ({world_size}): each rank does gradient_accumulation_steps / {world_size}")
    grad_accum //= world_size
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    if device_type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r} but CUDA is not available: use --device=cpu")
    dtype = resolve_dtype(cfg.dtype, device_type)
    try:
        check_attn_device(cfg.attn, device_type)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    ctx = autocast_context(device_type, dtype)
    wandb = None
    if cfg.wandb_log and master:
        try:
            import wandb
        except ImportError:
            raise ConfigError("wandb_log=True but wandb is not installed: pip install wandb, or --wandb_log=False")
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls (the few outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True

    # -------- checkpoint to resume from: it fixes the architecture, so it comes before the data
    ckpt = None
    iter_num = 0
    best_val_loss = float('inf')
    if cfg.init_from == 'resume':
        ckpt = load_checkpoint(cfg.out_dir, device)
        arch = {k: ckpt['model_args'][k] for k in ARCH_KEYS}
        changed = {k: v for k, v in arch.items() if getattr(cfg, k) != v}
        if changed and master:
            print(f"resume: the architecture is the checkpoint's, using {changed}")
        cfg = dataclasses.replace(cfg, **arch)  # dropout and attn may change between runs; the shapes may not
        iter_num = ckpt['iter_num']
        best_val_loss = ckpt['best_val_loss']
    elif master and os.path.exists(os.path.join(cfg.out_dir, 'ckpt.pt')):
        print(f"note: {cfg.out_dir}/ckpt.pt exists and this run starts from {cfg.init_from}: its first save replaces "
              f"it (--init_from=resume continues it instead)")
    tokens_per_iter = grad_accum * world_size * cfg.batch_size * cfg.block_size
    if master:
        print(f"device {device} ({torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu'}), "
              f"dtype {dtype}, attn {cfg.attn}, {world_size} process(es), tokens per iteration {tokens_per_iter:,}")

    # -------- data
    data_dir = cfg.data_dir or os.path.join(REPO_DIR, 'data', cfg.dataset)
    train_data = load_tokens(data_dir, 'train', device)
    val_data = load_tokens(data_dir, 'val', device)
    meta = read_meta(data_dir)
    for name, data in (('train', train_data), ('val', val_data)):
        if len(data) <= cfg.block_size:
            raise ConfigError(f"the {name} split has {len(data)} tokens, not more than block_size={cfg.block_size}")
    offsets = torch.arange(cfg.block_size, device=device)  # (T,)

    def get_batch(data: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        # random windows, gathered on the device: a few kernel launches, no host work, no sync
        ix = torch.randint(len(data) - cfg.block_size, (cfg.batch_size, 1), device=device, generator=gen)  # (B, 1)
        x = data[ix + offsets]  # (B, T)
        y = data[ix + 1 + offsets]  # (B, T)
        return x, y

    # -------- model and optimizer
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, attn=cfg.attn, dropout=cfg.dropout)
    elif cfg.init_from != 'scratch':  # GPT-2's weights (by name or directory): its shape, cropped to block_size
        model = model_from_checkpoint(hf_gpt2.load(cfg.init_from, block_size=cfg.block_size), attn=cfg.attn,
                                      dropout=cfg.dropout)
        cfg = dataclasses.replace(cfg, **{k: getattr(model.config, k) for k in ARCH_KEYS})  # saved as it is
    else:
        # the same seed on every rank and for every attn: identical initial weights
        torch.manual_seed(cfg.seed)
        model = GPT(GPTConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=cfg.block_size,
                              bias=cfg.bias, vocab_size=meta['vocab_size'] if meta else 50304,
                              dropout=cfg.dropout, attn=cfg.attn))
    model_args = dataclasses.asdict(model.config)
    model.to(device)
    # dropout draws from the global generator: differ per rank so ranks do not drop the same units
    torch.manual_seed(cfg.seed + rank)
    raw_model = model  # the un-compiled, un-wrapped module: what is saved and what counts FLOPs
    num_params = raw_model.get_num_params()
    if master:
        print(f"number of parameters: {num_params / 1e6:.2f}M")

    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), device_type)
    if ckpt is not None:
        fresh = [{k: g[k] for k in ('fused', 'foreach')} for g in optimizer.param_groups]
        optimizer.load_state_dict(ckpt['optimizer'])
        for g, keep in zip(optimizer.param_groups, fresh):
            g.update(keep)  # a checkpoint from a GPU must not turn on the fused CUDA kernel in a CPU run
    ckpt = None  # free the loaded tensors
    scaler = torch.amp.GradScaler('cuda', enabled=(dtype == 'float16'))  # a no-op unless float16

    # A small model's step is hundreds of short kernels: launching them from Python costs more than running
    # them, so on one GPU the compiled step is captured as CUDA graphs ('reduce-overhead') and replayed.
    # Not under DDP, whose gradient all-reduce runs from autograd hooks outside any graph.
    cudagraphs = cfg.compile and cfg.cudagraphs and device_type == 'cuda' and not ddp
    if cfg.compile:
        if master:
            print(f"compiling the model{' with CUDA graphs' if cudagraphs else ''}... (takes a minute)")
        model = torch.compile(model, mode='reduce-overhead' if cudagraphs else None)
    eval_model = model  # evaluated outside DDP: only the master evaluates, and DDP's forward expects every rank
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == 'cuda' else None, broadcast_buffers=False)

    # data order: a generator of its own per rank, so the same seed gives the same batches whatever attn is.
    # On resume it is seeded from the iteration too, so a resumed run does not replay its first batches.
    train_gen = torch.Generator(device=device).manual_seed(cfg.seed + rank + world_size * iter_num)
    # eval batches: a separate generator, reseeded at each eval, so every eval scores the same batches
    # (comparable across evals and across runs) and evaluating never shifts the training data order
    eval_gen = torch.Generator(device=device)

    @torch.no_grad()
    def estimate_loss() -> dict:
        out = {}
        eval_model.eval()
        eval_gen.manual_seed(cfg.seed + 10_000)
        for split, data in (('train', train_data), ('val', val_data)):
            losses = torch.zeros(cfg.eval_iters, device=device)
            for k in range(cfg.eval_iters):
                X, Y = get_batch(data, eval_gen)
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are no longer needed
                with ctx:
                    _, loss = eval_model(X, Y)
                losses[k] = loss
            out[split] = losses.mean().item()
        eval_model.train()
        return out

    if wandb is not None:
        wandb.init(project=cfg.wandb_project, name=cfg.wandb_run_name, config=dataclasses.asdict(cfg))

    peak_flops = gpu_peak_flops(torch.cuda.get_device_name(device)) if device_type == 'cuda' else None
    if peak_flops is not None and dtype == 'float32':
        peak_flops = None  # MFU is against the bf16 tensor-core peak; an fp32 run would read as tiny
    flops_per_iter = raw_model.flops_per_token() * tokens_per_iter
    if master and device_type == 'cuda' and peak_flops is None:
        print(f"MFU not reported: no bf16 peak known for {torch.cuda.get_device_name(device)} with dtype {dtype}")

    # -------- the loop
    losses_history = []  # (iter, train loss, val loss) at each eval
    timings = []  # (iter, ms/iter) per steady-state log window
    last_eval = {}
    X, Y = get_batch(train_data, train_gen)
    local_iter_num = 0
    window_t0, window_iters, window_first_local = time.perf_counter(), 0, 0
    while True:
        lr = get_lr(iter_num, cfg)
        for g in optimizer.param_groups:
            g['lr'] = lr

        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters or cfg.eval_only:
            if master:
                last_eval = estimate_loss()
                losses_history.append((iter_num, last_eval['train'], last_eval['val']))
                print(f"step {iter_num}: train loss {last_eval['train']:.4f}, val loss {last_eval['val']:.4f}")
                if wandb is not None:
                    wandb.log({'iter': iter_num, 'train/loss': last_eval['train'], 'val/loss': last_eval['val'],
                               'lr': lr})
                if last_eval['val'] < best_val_loss or cfg.always_save_checkpoint:
                    best_val_loss = min(best_val_loss, last_eval['val'])
                    if iter_num > 0 and not cfg.eval_only:
                        save_checkpoint({
                            'model': raw_model.state_dict(),
                            'optimizer': optimizer.state_dict(),
                            'model_args': model_args,
                            'iter_num': iter_num,
                            'best_val_loss': best_val_loss,
                            'config': dataclasses.asdict(cfg),
                            'meta': meta,  # the char vocabulary travels with the weights, for sample.py
                        }, cfg.out_dir)
                        print(f"saved checkpoint to {cfg.out_dir}")
            # the eval and save are not training time: start a new timing window after them
            window_t0, window_iters, window_first_local = time.perf_counter(), 0, local_iter_num
        if iter_num >= cfg.max_iters or cfg.eval_only:
            break

        # one optimizer step over grad_accum micro-batches
        for micro_step in range(grad_accum):
            if ddp:
                # all-reduce the gradients only on the last micro-step
                model.require_backward_grad_sync = (micro_step == grad_accum - 1)
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()  # the last replay's outputs are no longer needed
            with ctx:
                _, loss = model(X, Y)
                loss = loss / grad_accum  # the gradients add up over micro-steps: average them
            X, Y = get_batch(train_data, train_gen)  # queued while the backward runs
            scaler.scale(loss).backward()
        if cfg.grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        window_iters += 1

        if iter_num % cfg.log_interval == 0 and master:
            lossf = loss.item() * grad_accum  # the only host sync of a training step, on log steps only
            now = time.perf_counter()
            ms = (now - window_t0) * 1000 / window_iters
            if window_first_local > 0:  # the first window holds compilation and warm-up
                timings.append((iter_num, ms))
            mfu = flops_per_iter / (ms / 1000) / peak_flops if peak_flops else None
            mfu_str = f", mfu {mfu * 100:.1f}%" if mfu is not None else ""
            print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {ms:.2f} ms/iter, "
                  f"{tokens_per_iter / (ms / 1000):,.0f} tok/s{mfu_str}")
            if wandb is not None:
                wandb.log({'iter': iter_num, 'train/step_loss': lossf, 'ms_per_iter': ms,
                           'tokens_per_sec': tokens_per_iter / (ms / 1000), **({'mfu': mfu} if mfu else {})})
            window_t0, window_iters, window_first_local = now, 0, local_iter_num + 1
        iter_num += 1
        local_iter_num += 1

    if wandb is not None:
        wandb.finish()
    if own_process_group:
        dist.destroy_process_group()
    if not master:
        return {}
    ms_per_iter = float(np.median([ms for _, ms in timings])) if timings else None
    return {
        'iter_num': iter_num,
        'best_val_loss': best_val_loss,
        'train_loss': last_eval.get('train'),
        'val_loss': last_eval.get('val'),
        'losses': losses_history,
        'timings': timings,
        'ms_per_iter': ms_per_iter,
        'tokens_per_sec': tokens_per_iter / (ms_per_iter / 1000) if ms_per_iter else None,
        'mfu': flops_per_iter / (ms_per_iter / 1000) / peak_flops if (ms_per_iter and peak_flops) else None,
        'tokens_per_iter': tokens_per_iter,
        'num_params': num_params,
        'peak_mem_bytes': torch.cuda.max_memory_allocated(device) if device_type == 'cuda' else None,
        'device': device,
        'dtype': dtype,
        'attn': cfg.attn,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(argv, TrainConfig)
        train(cfg)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == '__main__':
    main()
