"""
Helpers that train.py, sample.py, compare.py, bench.py and tools/ share: settings (config files and --key=value
overrides checked against a dataclass), the GPU's peak and the commit being measured, precision, checkpoint I/O and
the token data on disk. Nothing here runs at import time.
"""

import argparse
import ast
import dataclasses
import difflib
import inspect
import io
import itertools
import os
import pickle
import re
import runpy
import subprocess
import sys
import textwrap
import tokenize
import types
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import torch

from model import GPT, GPTConfig

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


class ConfigError(ValueError):
    """A config file, override or setting that cannot be used; the message says which and what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------
# configuration: files of plain assignments, then --key=value overrides, checked against a dataclass

def _check_type(key: str, value, expected: type, source: str):
    """Return value as the field's type, or raise ConfigError naming the key and the expected type."""
    if isinstance(expected, types.UnionType):  # `bool | None`: None, or a value of the other type
        if value is None:
            return None
        expected, = (t for t in expected.__args__ if t is not type(None))
    # bool is a subclass of int in Python, so it is checked first and never accepted as a number
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(f"{key} expects {expected.__name__}, got {type(value).__name__} {value!r} ({source})")
    return value


def _unknown_key(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; --help lists the settings"
    return ConfigError(f"unknown config key {key!r} ({source}){hint}")


def read_settings(argv: list[str], config_cls: type) -> dict:
    """The values argv sets for config_cls's fields (config files run in order, --key=value overrides; later ones
    win), checked for known keys and types but not yet built into config_cls. ConfigError as parse_config."""
    fields = {f.name: f.type for f in dataclasses.fields(config_cls)}
    values = {}
    for arg in argv:
        if arg.startswith('-') and not arg.startswith('--'):
            raise ConfigError(f"unknown option {arg!r}: settings are given as --key=value (--help lists them)")
        if not arg.startswith('--'):
            # a config file: run it in a namespace of its own, keep its public assignments
            if os.path.isdir(arg):
                raise ConfigError(f"config file {arg!r} is a directory: give the path of a .py file in it")
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg!r} not found")
            _check_config_source(arg)
            try:
                namespace = runpy.run_path(arg)
            except SyntaxError as e:
                raise ConfigError(f"config file {arg!r} has a syntax error at line {e.lineno}: {e.msg}") from e
            except SystemExit as e:  # sys.exit() in a config file would end the program with no word about why
                raise ConfigError(f"config file {arg!r} called exit({e.code!r}): a config file only assigns "
                                  f"settings") from None
            except Exception as e:
                raise ConfigError(f"config file {arg!r} failed to run: {type(e).__name__}: {e}") from e
            for key, value in namespace.items():
                if key.startswith('_') or isinstance(value, (types.ModuleType, types.FunctionType,
                                                              types.BuiltinFunctionType, type)):
                    continue  # dunders, `import math`, `from math import sqrt` and helper functions are not settings
                if key not in fields:
                    raise _unknown_key(key, list(fields), f"in {arg}")
                values[key] = _check_type(key, value, fields[key], f"in {arg}")
        else:
            if '=' not in arg:
                raise ConfigError(f"expected --key=value, got {arg!r}")
            key, raw = arg[2:].split('=', 1)
            if key not in fields:
                raise _unknown_key(key, list(fields), "on the command line")
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw  # a bare word: only a str field accepts it, _check_type says so otherwise
            if fields[key] is float and raw.strip().lower() in ('nan', 'inf', '+inf', '-inf'):
                value = float(raw)  # a number, as float('nan') in a config file is: the field's range check names it
            if fields[key] is str and not isinstance(value, str):
                value = raw  # --wandb_run_name=2024 means the string '2024'
            values[key] = _check_type(key, value, fields[key], "on the command line")
    return values


def _check_config_source(path: str) -> None:
    """A config file is Python that assigns settings (key = value). YAML's `key: value` parses as an annotation that
    assigns nothing, and a JSON or YAML file's text as an expression: both would run and set nothing, silently."""
    if not path.endswith('.py'):
        raise ConfigError(f"config file {path!r} is not a .py file: a config file is Python, key = value per line "
                          f"(settings can also be given as --key=value)")
    try:
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # runpy reports it, with the line
    for node in _module_statements(tree.body):
        if isinstance(node, ast.AnnAssign) and node.value is None:
            raise ConfigError(f"config file {path!r} line {node.lineno} sets nothing (`{ast.unparse(node)}`): write "
                              f"key = value")
        is_text = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # a docstring or comment string
        if isinstance(node, ast.Expr) and not is_text and not isinstance(node.value, ast.Call):
            raise ConfigError(f"config file {path!r} line {node.lineno} is an expression that sets nothing: write "
                              f"key = value")


def _module_statements(body: list):
    """The statements a module runs at its top level, those inside if/for/with/try blocks included (not those of a
    function or class it defines)."""
    for node in body:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for block in ('body', 'orelse', 'finalbody'):
                yield from _module_statements(getattr(node, block, []))
            for handler in getattr(node, 'handlers', []):
                yield from _module_statements(handler.body)


HELP_FLAGS = ('-h', '--help')


def parse_config(argv: list[str], config_cls: type):
    """Build config_cls from argv: config file paths (applied in order), then --key=value overrides.

    Raises ConfigError, naming the key or file, for an unknown key, a value of the wrong type, a missing
    config file or one that does not run. With -h or --help anywhere in argv it prints the docstring of the
    module that defines config_cls (the script's usage) and every setting (settings_help), then exits with 0.
    """
    if any(arg in HELP_FLAGS for arg in argv):
        values = read_settings([arg for arg in argv if arg not in HELP_FLAGS], config_cls)
        usage = (sys.modules[config_cls.__module__].__doc__ or '').strip()
        print(f"{usage}\n\n{settings_help(config_cls, values)}")
        raise SystemExit(0)
    return config_cls(**read_settings(argv, config_cls))


def _field_comments(config_cls: type) -> tuple[dict[str, str], dict[str, str]]:
    """From the source of a config dataclass: ({field: the `# comment` on its line}, {field: the comment
    line(s) just above it, a section heading like `# AdamW`}). Both empty when the source cannot be read."""
    try:
        source = textwrap.dedent(inspect.getsource(config_cls))
    except (OSError, TypeError):  # a class made at run time, or a frozen program without its .py files
        return {}, {}
    comments = {}  # line number -> (text, whether it is alone on its line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            alone = not tok.line[:tok.start[1]].strip()
            comments[tok.start[0]] = (tok.string.lstrip('#').strip(), alone)
    on_line, above = {}, {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        for line in range(node.lineno, node.end_lineno + 1):  # a default may span lines
            if line in comments and not comments[line][1]:
                on_line[name] = comments[line][0]
                break
        heading, line = [], node.lineno - 1
        while line in comments and comments[line][1]:
            heading.insert(0, comments[line][0])
            line -= 1
        if heading:
            above[name] = ' '.join(heading)
    return on_line, above


def _default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()  # e.g. device: 'cuda' when this machine has a GPU, else 'cpu'
    return f.default


def settings_help(config_cls: type, values: dict | None = None,
                  title: str = "settings (--key=value, or key = value in a config file; later ones win)") -> str:
    """Every field of config_cls as `--name=type  default  comment`, grouped under the source's section
    comments. A value in `values` (what the config files and overrides before --help set) is shown too."""
    values = values or {}
    on_line, above = _field_comments(config_cls)
    rows = []
    for f in dataclasses.fields(config_cls):
        flag = f"--{f.name}={getattr(f.type, '__name__', str(f.type))}"
        default = f"default {_default(f)!r}"
        if f.name in values and values[f.name] != _default(f):
            default += f", here {values[f.name]!r}"
        rows.append((above.get(f.name), flag, default, on_line.get(f.name, '')))
    flag_w = max(len(r[1]) for r in rows) + 2
    default_w = max(len(r[2]) for r in rows) + 2
    lines = [f"{title}:"]
    for heading, flag, default, comment in rows:
        if heading:
            lines += ['', f"  {heading}"]
        lines.append(f"    {flag:<{flag_w}}{default:<{default_w}}{comment}".rstrip())
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------------------
# what token ids mean: a character vocabulary or GPT-2 BPE (meta.pkl, and 'meta' in a checkpoint)

def get_codec(meta: dict | None) -> tuple[Callable[[str], list[int]], Callable[[list[int]], str]]:
    """(encode, decode) for the tokens meta describes (see tokenizer_of): its character vocabulary, or GPT-2 BPE
    through tiktoken. encode raises ValueError naming the characters a character vocabulary lacks; ConfigError
    when tiktoken cannot load GPT-2's files or the tokenizer is unknown."""
    kind = tokenizer_of(meta)
    if kind == 'char':
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
    if kind != 'gpt2':
        raise ConfigError(f"unknown tokenizer {kind!r} in the dataset's or checkpoint's meta: "
                          f"this repo reads 'char' and 'gpt2'")
    import tiktoken
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:  # tiktoken fetches its BPE files on first use; offline this fails
        raise ConfigError(f"tiktoken could not load the GPT-2 BPE files ({type(e).__name__}). Without network "
                          "access, point tiktoken at a directory with a local copy of them: "
                          "export TIKTOKEN_CACHE_DIR=PATH/TO/tiktoken_cache") from e

    def decode_bpe(ids: list[int]) -> str:
        # a model's vocabulary is GPT-2's 50257 ids padded to 50304 (for faster matmuls); an untrained model can
        # sample a padding id, which is no text: it shows as U+FFFD instead of stopping tiktoken with a KeyError
        runs = itertools.groupby(ids, key=lambda i: i < enc.n_vocab)
        return ''.join(enc.decode(list(run)) if known else '\ufffd' * len(list(run)) for known, run in runs)

    return (lambda s: enc.encode(s, allowed_special={'<|endoftext|>'})), decode_bpe


def table_cell(x: float | None, spec: str) -> str:
    """x formatted for a results table; a dash when it was not measured (None or NaN)."""
    return '–' if x is None or x != x else format(x, spec)


# ----------------------------------------------------------------------------------------------------------
# the machine and the code being measured

# dense bf16 tensor-core peak, TFLOP/s, from NVIDIA's datasheets (no sparsity); matched against
# torch.cuda.get_device_name. A GPU not listed gets no MFU rather than one against the wrong peak.
GPU_PEAK_TFLOPS = [
    (r'\bH100\b.*\bPCIe\b', 756.0),
    (r'\bH100\b.*(\bSXM|\bHBM3\b)', 989.0),  # 'NVIDIA H100 80GB HBM3' is the SXM part
    (r'\bH200\b', 989.0),
    (r'\bA100\b', 312.0),
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser for the benchmarks, with an error as one `error:` line, as train.py, sample.py and the
    prepare scripts report one, instead of the usage followed by the error."""

    def error(self, message: str):
        sys.exit(f"error: {message} (--help lists the options)")


def require_gpu(script: str) -> None:
    """Exit with one line when a script that times or profiles GPU kernels starts without a CUDA GPU."""
    if not torch.cuda.is_available():
        raise SystemExit(f"error: {script} times GPU kernels and needs a CUDA GPU, which torch does not see here "
                         f"(the CPU tests are `python -m pytest tests`)")


def check_writable(path: str) -> None:
    """Exit with one line unless path can be written: checked before a long benchmark, whose results would
    otherwise be lost to an error at its end. Creates the file (empty) when it is absent."""
    try:
        with open(path, 'a'):
            pass
    except OSError as e:
        raise SystemExit(f"error: cannot write {path} ({e.strerror or e}): give another --out") from None


def gpu_peak_flops(device_name: str) -> float | None:
    for pattern, tflops in GPU_PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return tflops * 1e12
    return None


def git_commit() -> str:
    """The commit being measured: GIT_COMMIT when set (a tree copied to another machine may carry no .git, or a
    stale one), else from git."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO_DIR)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO_DIR)
        if head.returncode == 0:
            return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return "unknown"


# ----------------------------------------------------------------------------------------------------------
# precision, checkpoints and data

def resolve_dtype(dtype: str, device_type: str) -> str:
    """'auto' -> bfloat16 on a GPU that has it, float16 on an older GPU, float32 on the CPU.
    float32 on the CPU because CPU autocast to bf16 is slower than fp32 on most CPUs (no bf16 matmul units)
    and the CPU runs here are small anyway."""
    if dtype == 'auto':
        if device_type == 'cuda':
            return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
        return 'float32'
    if dtype == 'float16' and device_type != 'cuda':
        raise ConfigError("dtype='float16' needs a CUDA device (its loss scaling is CUDA-only here); "
                          "use dtype='float32' or 'bfloat16'")
    if dtype == 'bfloat16' and device_type == 'cuda' and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bfloat16: use dtype='float16' or 'float32'")
    return dtype


def autocast_context(device_type: str, dtype: str):
    if dtype == 'float32':
        return nullcontext()
    ptdtype = {'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    return torch.amp.autocast(device_type=device_type, dtype=ptdtype)


def checkpoint_path(out_dir: str) -> str:
    """out_dir/ckpt.pt when it is there, without reading it; an error that says what to do when it is not."""
    if not out_dir or os.path.isfile(out_dir):
        what = 'is empty' if not out_dir else f'{out_dir!r} is a file, not a directory'
        raise FileNotFoundError(f"out_dir {what}: point --out_dir at the directory that has ckpt.pt")
    path = os.path.join(out_dir, 'ckpt.pt')
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint: move it out of the way, or point --out_dir "
                              f"at the directory that has ckpt.pt")
    from hf_gpt2 import is_hf_dir  # here, not at the top: hf_gpt2 imports this module
    if not os.path.isfile(path) and is_hf_dir(out_dir):
        raise FileNotFoundError(f"{out_dir} is a Hugging Face GPT-2 directory, not a training out_dir (no ckpt.pt): "
                                f"load it with --init_from={out_dir}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one first (python train.py CONFIG "
                                f"--out_dir={out_dir}), or point --out_dir at the directory that has ckpt.pt")
    return path


def out_of_memory(e: BaseException) -> str:
    """'GPU' or 'CPU' when e is an allocation that failed there, '' when it is anything else: the GPU's
    torch.cuda.OutOfMemoryError (inside a compiled graph, a plain RuntimeError that says so), the CPU's from torch's
    allocator ("can't allocate memory") or Python's MemoryError."""
    text = str(e).lower()
    if not (isinstance(e, MemoryError) or
            (isinstance(e, RuntimeError) and ('out of memory' in text or "can't allocate memory" in text))):
        return ''
    return 'GPU' if isinstance(e, torch.cuda.OutOfMemoryError) or 'cuda' in text else 'CPU'


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to limit characters: torch's own run to many lines."""
    return (str(e).strip().splitlines() or [''])[0][:limit]


def load_checkpoint(out_dir: str, device: str) -> dict:
    """Load out_dir/ckpt.pt, with an error that says what to do when it is missing or unreadable."""
    path = checkpoint_path(out_dir)
    try:
        # weights_only: a checkpoint is tensors and plain Python values, nothing that needs arbitrary unpickling
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        if out_of_memory(e):  # a sound file on a machine short of memory: nothing to restore
            raise CheckpointError(f"not enough memory on {device} to load checkpoint {path} "
                                  f"({os.path.getsize(path) / 2**20:,.0f} MiB; {first_line(e, 160)}): the file was "
                                  f"left as it is; free memory and try again") from e
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint of this repo "
                              f"({type(e).__name__}: {first_line(e)}). It was left as it is; restore it from a copy, "
                              f"or train again from scratch into another --out_dir.") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a checkpoint: it was not "
                              f"written by this repo's train.py")
    missing = [k for k in ('model', 'model_args', 'config', 'iter_num', 'best_val_loss') if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: it was not written by this repo's train.py")
    if isinstance(ckpt['best_val_loss'], torch.Tensor) and ckpt['best_val_loss'].numel() == 1:
        ckpt['best_val_loss'] = ckpt['best_val_loss'].item()  # nanoGPT's train.py saves the loss tensor itself
    kinds = {'model': dict, 'model_args': dict, 'iter_num': int, 'best_val_loss': (int, float)}
    wrong = [f"{k} is a {type(ckpt[k]).__name__}" for k, kind in kinds.items()
             if not isinstance(ckpt[k], kind) or isinstance(ckpt[k], bool)]
    if wrong or ckpt['iter_num'] < 0:
        raise CheckpointError(f"checkpoint {path} is damaged ({', '.join(wrong) or 'iter_num < 0'}): restore it "
                              f"from a copy")
    try:  # the model's own checks (sizes, n_embd % n_head); attn is the run's choice, checked where it runs
        GPTConfig(**{**ckpt['model_args'], 'attn': 'sdpa'})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a model this repo can build ({type(e).__name__}: "
                              f"{first_line(e)}): restore it from a copy") from None
    bad = non_finite_tensors(ckpt['model'])
    if bad:
        raise CheckpointError(f"checkpoint {path} holds NaN or inf weights ({bad}): it was saved by a run that "
                              f"diverged, and nothing can be trained or sampled from it; restore an earlier copy, "
                              f"or train again from scratch")
    if ckpt.get('meta') is not None and (problem := meta_problem(ckpt['meta'])):
        raise CheckpointError(f"checkpoint {path} carries a damaged vocabulary ({problem}): restore it from a copy")
    ckpt['source'] = path  # for messages about it (hf_gpt2.load sets the same for GPT-2's weights)
    return ckpt


def non_finite_tensors(state_dict: dict) -> str:
    """The names of the floating-point tensors that hold NaN or inf, a few of them ('' when none do)."""
    bad = [name for name, t in state_dict.items()
           if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]
    return ', '.join(bad[:3]) + (', ...' if len(bad) > 3 else '')


def model_from_checkpoint(ckpt: dict, **overrides) -> GPT:
    """Rebuild the GPT a checkpoint holds. overrides replace its model_args, e.g. attn='sdpa' to run it with
    another attention implementation than it was trained with, or dropout=0.0."""
    # a model saved after torch.compile carries this prefix on every key. nanoGPT on a torch without flash attention
    # kept its causal mask as a buffer named attn.bias; this model builds the mask itself (model.py), and its own
    # parameters are never named that (they are attn.c_attn.*)
    state_dict = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items() if not k.endswith('.attn.bias')}
    try:
        model = GPT(GPTConfig(**{**ckpt['model_args'], **overrides}))
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, ValueError) as e:  # unknown or bad model_args, weights that do not fit
        reason = ' '.join(str(e).split())  # load_state_dict's first line only says that there are errors
        reason = reason if len(reason) <= 300 else reason[:300] + ' ...'  # one line, even for many keys
        raise CheckpointError(f"checkpoint {ckpt.get('source', '')} does not hold a model this repo can build "
                              f"({type(e).__name__}: {reason})") from e
    return model


def replace_file(path: str, write) -> None:
    """write(tmp) a file at path + '.tmp', then rename it over path: a crash mid-write never leaves a half-written
    file under the name. On an error (a full disk, a read-only file system, a directory at path) or Ctrl-C the
    temporary file is removed, path is left as it was, and the error propagates."""
    tmp = path + '.tmp'
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.isfile(tmp):
            os.remove(tmp)
        if isinstance(e.__context__, KeyboardInterrupt) and not isinstance(e, KeyboardInterrupt):
            # torch.save's zip writer fails on its way out of a Ctrl-C ("unexpected pos"): the Ctrl-C is the news
            raise KeyboardInterrupt from None
        raise


def save_checkpoint(ckpt: dict, out_dir: str) -> None:
    """Write to a temporary file, then rename over ckpt.pt: a crash mid-write never leaves a half checkpoint.
    Refuses (CheckpointError, ckpt.pt untouched) weights that hold NaN or inf: a diverged model never replaces
    a good checkpoint."""
    path = os.path.join(out_dir, 'ckpt.pt')
    bad = non_finite_tensors(ckpt['model'])
    if bad:
        raise CheckpointError(f"refusing to save {path}: the model's weights hold NaN or inf ({bad}); the "
                              f"checkpoint there was left as it is")

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())

    try:
        os.makedirs(out_dir, exist_ok=True)
        replace_file(path, write)
    except OSError as e:  # a full disk, a directory named ckpt.pt, a file system gone read-only
        raise CheckpointError(f"could not save {path} ({e.strerror or e}); the checkpoint there was left as it is: "
                              f"free space or fix the directory, then continue with --init_from=resume") from None


def tokenizer_of(meta: dict | None) -> str:
    """What a dataset's or checkpoint's tokens mean: 'char' (meta['stoi'] / meta['itos']) or 'gpt2' (GPT-2 BPE).
    A meta without a 'tokenizer' key comes from before the key existed: 'char' if it has a vocabulary, else
    'gpt2'; None (a nanoGPT checkpoint, or a model loaded from GPT-2 weights) means GPT-2 BPE."""
    if meta is None:
        return 'gpt2'
    return meta.get('tokenizer', 'char' if 'stoi' in meta else 'gpt2')


def describe_meta(meta: dict | None) -> str:
    """A meta in a few words: 'characters (65 ids)' or 'GPT-2 BPE (50257 ids)'."""
    vocab_size = (meta or {}).get('vocab_size', 50257)  # no meta: GPT-2's own vocabulary
    return f"{'characters' if tokenizer_of(meta) == 'char' else 'GPT-2 BPE'} ({vocab_size} ids)"


def meta_mismatch(a: dict | None, b: dict | None, a_name: str, b_name: str) -> str | None:
    """How two metas (e.g. a checkpoint's and a dataset's) disagree on what token ids mean, naming both sides;
    None when they agree: the same tokenizer, vocab_size and, for characters, the same character for every id."""
    both_char = tokenizer_of(a) == tokenizer_of(b) == 'char'
    if describe_meta(a) == describe_meta(b) and not (both_char and a['stoi'] != b['stoi']):
        return None
    text = f"the token ids mean different things: {a_name}: {describe_meta(a)}, {b_name}: {describe_meta(b)}"
    if both_char:
        only_a, only_b = sorted(set(a['stoi']) - set(b['stoi'])), sorted(set(b['stoi']) - set(a['stoi']))
        text += f"; characters only in {a_name}: {''.join(only_a)!r}, only in {b_name}: {''.join(only_b)!r}"
    return text


def prepare_hint(data_dir: str) -> str:
    """What to run to (re)create a dataset: its prepare.py when it has one, else the repo's datasets."""
    script = os.path.join(data_dir, 'prepare.py')
    if os.path.isfile(script):
        return (f"prepare the dataset first: python {os.path.relpath(script)} "
                f"(offline: add --input PATH, a local copy of input.txt)")
    data_root = os.path.join(REPO_DIR, 'data')
    known = sorted(d for d in os.listdir(data_root) if os.path.isfile(os.path.join(data_root, d, 'prepare.py')))
    return (f"prepare the dataset first (train.bin, val.bin and meta.pkl, as data/<name>/prepare.py writes "
            f"them), or pick one of the repo's datasets with --dataset={' | '.join(known)} after running "
            f"its prepare.py")


def meta_problem(meta) -> str | None:
    """What is wrong with a meta (a dataset's meta.pkl, or the copy a checkpoint carries), None when it is sound:
    a dict with a whole vocab_size >= 1, a known tokenizer, and for characters stoi and itos mapping vocab_size
    characters and the ids 0 .. vocab_size - 1 onto each other."""
    if not isinstance(meta, dict):
        return f"a {type(meta).__name__}, not a dict"
    vocab_size = meta.get('vocab_size')
    if type(vocab_size) is not int or vocab_size < 1:
        return f"vocab_size is {vocab_size!r}, not a whole number >= 1"
    kind = tokenizer_of(meta)
    if kind not in ('char', 'gpt2'):
        return f"tokenizer {kind!r} is neither 'char' nor 'gpt2'"
    if kind == 'char':
        stoi, itos = meta.get('stoi'), meta.get('itos')
        if not (isinstance(stoi, dict) and isinstance(itos, dict)):
            return "a character vocabulary without its stoi and itos tables"
        ids = list(stoi.values())
        if (not all(type(i) is int for i in ids) or sorted(ids) != list(range(vocab_size))
                or any(itos.get(i) != ch for ch, i in stoi.items())):
            return (f"its {len(stoi)} characters do not map one to one onto the ids 0..{vocab_size - 1} "
                    f"(stoi and itos disagree with vocab_size or each other)")
    return None


class _PlainUnpickler(pickle.Unpickler):
    """A meta.pkl holds dicts, strings and ints only. A pickle that names a class or a function can run any code
    when it is loaded, so one that tries is refused rather than trusted."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, and a meta.pkl holds plain values only")


def read_meta(data_dir: str) -> dict | None:
    """The dataset's meta.pkl: what its token ids mean (see tokenizer_of); None when there is none."""
    path = os.path.join(data_dir, 'meta.pkl')
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'rb') as f:
            meta = _PlainUnpickler(f).load()
    except Exception as e:  # truncated, not a pickle, or one that would run code: all mean the same to the user
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}: {first_line(e)}): "
                          f"{prepare_hint(data_dir)}") from e
    if problem := meta_problem(meta):
        raise ConfigError(f"{path} is not a sound dataset meta ({problem}): {prepare_hint(data_dir)}")
    return meta


def load_tokens(data_dir: str, split: str, device: str, vocab_size: int | None = None,
                blame: str | None = None) -> torch.Tensor:
    """The whole split as one int64 tensor on the device: the Shakespeare splits are a few MB, and
    gathering batches on the device avoids a host->device copy and its Python overhead every step.
    With vocab_size, every token id is checked to be below it, once, here; an id past it is the data's fault
    unless blame says what else is (a pretrained model with a smaller vocabulary)."""
    path = os.path.join(data_dir, f'{split}.bin')
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {prepare_hint(data_dir)}")
    if os.path.getsize(path) % 2:
        raise ConfigError(f"{path} is not a file of uint16 token ids (an odd number of bytes): "
                          f"{prepare_hint(data_dir)}")
    ids = np.fromfile(path, dtype=np.uint16)
    if vocab_size is not None and len(ids) and int(ids.max()) >= vocab_size:
        why = blame or f"it is not this dataset's tokens; {prepare_hint(data_dir)}"
        raise ConfigError(f"{path} holds token id {int(ids.max())}, outside the model's vocabulary of {vocab_size} "
                          f"ids (0..{vocab_size - 1}): {why}")
    return torch.from_numpy(ids.astype(np.int64)).to(device)
