"""
Sample from a trained model.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
    python sample.py config/some_sample_settings.py --start=FILE:prompt.txt --attn=sdpa

Settings are the fields of SampleConfig, given as in train.py: config files of plain assignments, then
--key=value overrides. Characters are decoded with the checkpoint's vocabulary; a dataset without one
(no meta.pkl) is GPT-2 BPE, decoded with tiktoken.
"""

import os
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import hf_gpt2
from model import check_attn_device
from utils import (REPO_DIR, CheckpointError, ConfigError, autocast_context, load_checkpoint,
                   model_from_checkpoint, parse_config, resolve_dtype)


@dataclass
class SampleConfig:
    init_from: str = 'resume'  # 'resume' (out_dir/ckpt.pt) | 'gpt2'... 'gpt2-xl' | a Hugging Face GPT-2 directory
    out_dir: str = 'out'  # the directory with ckpt.pt
    start: str = '\n'  # the prompt, or FILE:path to read it from a file
    num_samples: int = 10
    max_new_tokens: int = 500  # tokens generated per sample
    temperature: float = 0.8  # 1.0 = the model's distribution; lower is more conservative
    top_k: int = 200  # sample among the top_k most likely tokens only; 0 = all of them
    seed: int = 1337
    device: str = field(default_factory=lambda: 'cuda' if torch.cuda.is_available() else 'cpu')
    dtype: str = 'auto'  # 'auto' | 'float32' | 'bfloat16' | 'float16'
    # torch.compile: with the cache its decode step (fused kernels, then one CUDA graph), without it the model;
    # on by default on a GPU, where it is faster; compiling takes seconds to tens of seconds, once per run
    compile: bool = field(default_factory=torch.cuda.is_available)
    kv_cache: bool = True  # prefill once, then one token at a time through a KV cache; False re-runs the context
    attn: str = ''  # '' = the implementation the checkpoint was trained with; else 'triton' | 'sdpa' | 'naive'

    def __post_init__(self):
        hf_gpt2.check_init_from(self.init_from, own=('resume',))


def get_codec(ckpt: dict) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """(encode, decode) for the checkpoint's dataset: its character vocabulary, or GPT-2 BPE without one."""
    meta = ckpt.get('meta')
    if 'meta' not in ckpt:
        # a checkpoint without the vocabulary inside (e.g. from nanoGPT): look for the dataset's meta.pkl
        config = ckpt['config']
        data_dir = config.get('data_dir') or os.path.join(REPO_DIR, 'data', config['dataset'])
        meta_path = os.path.join(data_dir, 'meta.pkl')
        if os.path.isfile(meta_path):
            with open(meta_path, 'rb') as f:
                meta = pickle.load(f)
    if meta is not None and 'stoi' in meta:  # a character vocabulary; else GPT-2 BPE
        stoi, itos = meta['stoi'], meta['itos']

        def encode(s: str) -> list[int]:
            unknown = sorted(set(c for c in s if c not in stoi))
            if unknown:
                raise ValueError(f"the prompt has characters outside the model's {len(stoi)}-character vocabulary: "
                                 f"{', '.join(repr(c) for c in unknown)}; remove or replace them")
            return [stoi[c] for c in s]

        def decode(ids: list[int]) -> str:
            return ''.join(itos[i] for i in ids)

        return encode, decode
    import tiktoken
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:  # tiktoken fetches its BPE files on first use; offline this fails
        raise ConfigError(f"tiktoken could not load the GPT-2 BPE files this checkpoint's dataset uses "
                          f"({type(e).__name__}). Without network access, point tiktoken at a local copy of "
                          "them, e.g. export TIKTOKEN_CACHE_DIR=../shared/tiktoken_cache") from e
    return (lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})), enc.decode


def read_prompt(start: str) -> str:
    if start.startswith('FILE:'):
        path = start[len('FILE:'):]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"prompt file {path!r} (from start=FILE:...) not found")
        with open(path, 'r', encoding='utf-8') as f:
            start = f.read()
    if not start:
        raise ValueError("the prompt is empty: give at least one token, e.g. --start='\\n'")
    return start


def generate_samples(cfg: SampleConfig, timings: list[float] | None = None) -> list[str]:
    """Generate cfg.num_samples texts (prompt included) from the checkpoint in cfg.out_dir. Appends each sample's
    wall time in seconds (generation and the read-back of its tokens) to timings when given."""
    device_type = 'cuda' if cfg.device.startswith('cuda') else 'cpu'
    dtype = resolve_dtype(cfg.dtype, device_type)
    prompt = read_prompt(cfg.start)
    ckpt = load_checkpoint(cfg.out_dir, cfg.device) if cfg.init_from == 'resume' else hf_gpt2.load(cfg.init_from)
    attn = cfg.attn or ckpt['model_args']['attn']
    try:
        check_attn_device(attn, device_type)
    except RuntimeError as e:
        raise ConfigError(f"{e} (the checkpoint was trained with attn={ckpt['model_args']['attn']!r}; "
                          f"any implementation can run it)") from None
    encode, decode = get_codec(ckpt)
    start_ids = encode(prompt)
    model = model_from_checkpoint(ckpt, attn=attn)
    model.eval()
    model.to(cfg.device)
    if cfg.compile and not cfg.kv_cache:  # with the cache, generate compiles its decode step itself
        # compile forward, not the module: generate() calls self(...), which a compiled wrapper would bypass;
        # dynamic because the context grows by one token per step
        model.forward = torch.compile(model.forward, dynamic=True)

    torch.manual_seed(cfg.seed)
    x = torch.tensor(start_ids, dtype=torch.long, device=cfg.device)[None, ...]  # (1, T)
    samples = []
    with torch.no_grad(), autocast_context(device_type, dtype):
        for _ in range(cfg.num_samples):
            t0 = time.perf_counter()
            y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                               kv_cache=cfg.kv_cache, compile=cfg.compile)
            ids = y[0].tolist()  # waits for the device
            if timings is not None:
                timings.append(time.perf_counter() - t0)
            samples.append(decode(ids))
    return samples


def speed_report(timings: list[float], max_new_tokens: int, kv_cache: bool, compile: bool) -> str:
    """One line of tokens/s. The first sample also pays for compilation (torch.compile's and the kernels') and
    CUDA-graph capture, so with more than one sample the rate is that of the others, and the first is reported
    apart, with its time."""
    def rate(ts: list[float]) -> float:
        return max_new_tokens * len(ts) / max(sum(ts), 1e-9)

    head = f"{len(timings)} samples x {max_new_tokens} new tokens, kv_cache={kv_cache}, compile={compile}: "
    if len(timings) == 1:
        return head + f"{rate(timings):.0f} tokens/s (warm-up included: {timings[0]:.1f} s)"
    return head + (f"{rate(timings[1:]):.0f} tokens/s (first sample, warm-up included: {rate(timings[:1]):.0f} "
                   f"tokens/s, {timings[0]:.1f} s)")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(argv, SampleConfig)
        timings = []
        samples = generate_samples(cfg, timings)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for s in samples:
        print(s)
        print('---------------')
    if timings:  # stderr: stdout stays the samples
        print(speed_report(timings, cfg.max_new_tokens, cfg.kv_cache, cfg.compile), file=sys.stderr)


if __name__ == '__main__':
    main()
