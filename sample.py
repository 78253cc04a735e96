"""
Sample from a trained model.

    python sample.py --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3
    python sample.py my_settings.py --start=FILE:prompt.txt --attn=sdpa    # my_settings.py: your own assignments
    python sample.py --out_dir=../nanoGPT/out-shakespeare-char --data_dir=../nanoGPT/data/shakespeare_char

Settings are the fields of SampleConfig, given as in train.py: config files of plain assignments, then
--key=value overrides; --help lists them. Every setting is checked before the checkpoint is read. Tokens are
decoded as the checkpoint says (its 'meta': a character vocabulary, or GPT-2 BPE). A checkpoint without one,
such as nanoGPT's, takes the vocabulary of its dataset's meta.pkl (--data_dir, else data/<its dataset>), and is
GPT-2 BPE when there is none. Errors are one line, `error: ...`, with a non-zero exit.
"""

import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch

import hf_gpt2
from model import ATTN_IMPLS, MIN_TEMPERATURE, check_attn_device
from utils import (REPO_DIR, CheckpointError, ConfigError, autocast_context, first_line, get_codec, load_checkpoint,
                   meta_mismatch, model_from_checkpoint, out_of_memory, parse_config, read_meta, resolve_dtype,
                   tokenizer_of)


def _default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def check_device(device: str) -> str:
    """'cpu' or 'cuda' for a device this machine has; ConfigError saying what to use otherwise."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ('cpu', 'cuda'):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but this machine has no CUDA GPU that torch can use: "
                              f"use --device=cpu")
        index, count = torch.device(device).index, torch.cuda.device_count()
        if index is not None and index >= count:
            raise ConfigError(f"device={device!r} but this machine has {count} CUDA GPU(s): "
                              f"use cuda:0 to cuda:{count - 1}")
    return kind


MAX_NEW_TOKENS = 1_000_000


@dataclass
class SampleConfig:
    init_from: str = 'resume'  # 'resume' (out_dir/ckpt.pt) | 'gpt2'... 'gpt2-xl' | a Hugging Face GPT-2 directory
    out_dir: str = 'out'  # the directory with ckpt.pt
    start: str = '\n'  # the prompt, or FILE:path to read it from a file
    num_samples: int = 10  # how many samples, >= 1
    max_new_tokens: int = 500  # tokens generated per sample, >= 1
    temperature: float = 0.8  # >= 1e-4: 1.0 = the model's distribution; lower is more conservative
    top_k: int = 200  # sample among the top_k most likely tokens only; 0 (or more than the vocabulary) = all
    seed: int = 1337  # the same seed, checkpoint and settings give the same samples
    device: str = field(default_factory=_default_device)  # 'cpu' | 'cuda' | 'cuda:N'; cuda when there is a GPU
    dtype: str = 'auto'  # 'auto' | 'float32' | 'bfloat16' | 'float16'
    compile: bool | None = None  # torch.compile the decode step; None = on a CUDA device, not on the CPU
    kv_cache: bool = True  # prefill once, then one token at a time through a KV cache; False re-runs the context
    attn: str = ''  # '' = the implementation the checkpoint was trained with; else 'triton' | 'sdpa' | 'naive'
    data_dir: str = ''  # a dataset whose meta.pkl must agree with the checkpoint ('' = data/<its dataset> if needed)

    def __post_init__(self):
        hf_gpt2.check_init_from(self.init_from, own=('resume',))
        if self.compile is None:
            # on a CPU inductor's C++ build takes tens of seconds, more than a sample's decoding gains from it
            self.compile = self.device.startswith('cuda')
        for key in ('num_samples', 'max_new_tokens'):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.max_new_tokens > MAX_NEW_TOKENS:
            raise ConfigError(f"max_new_tokens must be <= {MAX_NEW_TOKENS:,} (a sample's tokens are held in memory "
                              f"and printed at its end), got {self.max_new_tokens:,}")
        if not (math.isfinite(self.temperature) and self.temperature >= MIN_TEMPERATURE):
            raise ConfigError(f"temperature must be a number >= {MIN_TEMPERATURE:g}, got {self.temperature} "
                              f"(for the most likely token at every step use --top_k=1)")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0 = sample among all tokens), got {self.top_k}")
        if not 0 <= self.seed < 2**32:  # as train.py's: torch's generators take seeds below 2**64
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        choices = {'attn': ('',) + ATTN_IMPLS, 'dtype': ('auto', 'float32', 'bfloat16', 'float16')}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        resolve_dtype(self.dtype, check_device(self.device))  # raises for float16 on the CPU, bf16 on an old GPU


def read_prompt(start: str) -> str:
    if start.startswith('FILE:'):
        path = start[len('FILE:'):]
        if os.path.isdir(path):
            raise ValueError(f"prompt file {path!r} (from start=FILE:...) is a directory: give a text file")
        if not os.path.exists(path):  # exists, not isfile: /dev/stdin and a shell's <(...) are not regular files
            raise FileNotFoundError(f"prompt file {path!r} (from start=FILE:...) not found")
        with open(path, 'rb') as f:
            raw = f.read()
        try:
            start = raw.decode('utf-8')
        except UnicodeDecodeError:
            raise ValueError(f"prompt file {path!r} is not UTF-8 text: save it as UTF-8") from None
    if not start:
        raise ValueError("the prompt is empty: give at least one token, e.g. --start='ROMEO:', or leave --start "
                         "out for the default, a newline")
    return start


def _dataset_meta(data_dir: str, asked: bool) -> dict | None:
    """The meta.pkl of data_dir; None when it has none, unless the user asked for that dataset (asked)."""
    if not data_dir or not os.path.isfile(os.path.join(data_dir, 'meta.pkl')):
        if asked:
            raise ConfigError(f"--data_dir={data_dir} has no meta.pkl: run that dataset's prepare.py, which writes "
                              f"one, or leave --data_dir out")
        return None
    return read_meta(data_dir)  # ConfigError, saying what to run, for a damaged or foreign file


def checkpoint_meta(ckpt: dict, ckpt_path: str, data_dir: str = '') -> dict | None:
    """What the checkpoint's tokens mean (a meta dict; None is GPT-2 BPE).

    Its own 'meta' when it has one: this repo's train.py stores it. A checkpoint without the key (nanoGPT's
    train.py) takes its dataset's meta.pkl (data_dir, else its config's data_dir or data/<dataset>), and is
    GPT-2 BPE when there is none, like nanoGPT's OpenWebText and GPT-2 checkpoints. A dataset given as data_dir
    must agree with the checkpoint, and any vocabulary must fit the model's embedding: ConfigError naming both
    sides otherwise.
    """
    if 'meta' in ckpt:
        meta, source = ckpt['meta'], f"checkpoint {ckpt_path}"
        mismatch = meta_mismatch(_dataset_meta(data_dir, asked=True), meta,
                                 f"the dataset {os.path.join(data_dir, 'meta.pkl')}", source) if data_dir else None
        if mismatch:
            raise ConfigError(f"{mismatch}. Point --data_dir at the dataset the model was trained on, or leave it "
                              f"out: the checkpoint carries its own vocabulary")
    else:
        config = ckpt.get('config') or {}
        dataset_dir = data_dir or config.get('data_dir') or (
            os.path.join(REPO_DIR, 'data', config['dataset']) if config.get('dataset') else '')
        meta = _dataset_meta(dataset_dir, asked=bool(data_dir))
        source = os.path.join(dataset_dir, 'meta.pkl') if meta is not None else f"checkpoint {ckpt_path}"
    model_vocab = ckpt['model_args'].get('vocab_size')
    kind = tokenizer_of(meta)
    if 'meta' not in ckpt:
        fix = "point --data_dir at the dataset it was trained on (its meta.pkl)"
    elif ckpt_path.endswith('ckpt.pt'):  # its own vocabulary: no dataset can stand in for it
        fix = "the checkpoint is damaged; restore it from a copy"
    else:  # a Hugging Face directory: its vocabulary is the meta.pkl beside config.json, or GPT-2 BPE without one
        fix = ("a character model needs its meta.pkl beside config.json (hf_gpt2.py export writes it there); "
               "export the model again")
    if kind == 'char' and model_vocab != len(meta['stoi']):
        raise ConfigError(f"{source} has {len(meta['stoi'])} characters and the model in {ckpt_path} has "
                          f"{model_vocab} token ids: that is not the vocabulary the model was trained with; {fix}")
    if kind == 'gpt2' and model_vocab is not None and model_vocab < 50257:
        raise ConfigError(f"{source} means GPT-2 BPE (50257 token ids; no character vocabulary was found) and the "
                          f"model in {ckpt_path} has only {model_vocab}: {fix}")
    return meta


def generate_samples(cfg: SampleConfig, timings: list[float] | None = None) -> list[str]:
    """Generate cfg.num_samples texts (prompt included) from the checkpoint in cfg.out_dir (or the GPT-2 that
    cfg.init_from names). Appends each sample's wall time in seconds (generation and the read-back of its tokens) to
    timings when given."""
    device_type = check_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device_type)
    prompt = read_prompt(cfg.start)
    if cfg.init_from == 'resume':
        ckpt, ckpt_path = load_checkpoint(cfg.out_dir, cfg.device), os.path.join(cfg.out_dir, 'ckpt.pt')
    else:
        ckpt, ckpt_path = hf_gpt2.load(cfg.init_from), cfg.init_from
    trained_attn = ckpt['model_args'].get('attn', 'sdpa')  # nanoGPT's carry none; nanoGPT runs torch's SDPA
    attn = cfg.attn or trained_attn
    try:
        check_attn_device(attn, device_type, dtype)
    except RuntimeError as e:
        raise ConfigError(f"{e} (the checkpoint was trained with attn={trained_attn!r}; "
                          f"any implementation can run it)") from None
    encode, decode = get_codec(checkpoint_meta(ckpt, ckpt_path, cfg.data_dir))
    start_ids = encode(prompt)
    model = model_from_checkpoint(ckpt, attn=attn)  # this repo's or nanoGPT's
    window = model.config.block_size
    if len(start_ids) > window:  # stderr: stdout stays the samples
        print(f"note: the prompt is {len(start_ids):,} tokens and the model's context {window:,}: it continues from "
              f"the prompt's last {window:,} (the whole prompt is printed)", file=sys.stderr)
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
    except (RuntimeError, MemoryError) as e:
        where = out_of_memory(e)
        if not where:  # anything else is a bug, with its traceback
            raise
        sys.exit(f"error: the {where} ran out of memory ({first_line(e, 160)}): lower --max_new_tokens (the KV "
                 f"cache grows with it), or sample where more memory is free")
    except KeyboardInterrupt:  # the samples print at the end, together
        sys.exit("interrupted: no sample was printed")
    for s in samples:
        print(s)
        print('---------------')
    if timings:  # stderr: stdout stays the samples
        print(speed_report(timings, cfg.max_new_tokens, cfg.kv_cache, cfg.compile), file=sys.stderr)


if __name__ == '__main__':
    main()
