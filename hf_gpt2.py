"""
Hugging Face GPT-2 in and out: OpenAI's pretrained weights (or any GPT-2 directory) into our GPT, and any
checkpoint of ours out as a directory that transformers.GPT2LMHeadModel.from_pretrained reads.

In:  train.py and sample.py take --init_from=gpt2 | gpt2-medium | gpt2-large | gpt2-xl (through the Hugging Face
     hub's client: its cache first, then a download), or --init_from=PATH, a local directory with config.json and
     model.safetensors (or pytorch_model.bin; sharded files with their index too). Both call load() below.
Out: python hf_gpt2.py export --out_dir=out-shakespeare-char --hf_dir=hf-shakespeare-char
     writes config.json and model.safetensors into --hf_dir, and meta.pkl beside them for a character-level model
     (its vocabulary: transformers knows only GPT-2's BPE tokenizer). --hf_dir must be new or empty.

The model's shape is config.json's (n_layer, n_head, n_embd, n_positions, vocab_size); what our GPT cannot compute
exactly (another layer-norm epsilon, another activation, attention scaled by layer index, untied output weights)
is refused with the key that says so. GPT-2's files store the four projections as Conv1D, (in, out): they are
transposed into nn.Linear's (out, in) on the way in and back on the way out. safetensors and huggingface_hub are
imported only when used; transformers is never needed (the tests use it to check the logits).
"""

import json
import os
import pickle
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from model import GPT, GPTConfig
from utils import (HELP_FLAGS, CheckpointError, ConfigError, first_line, load_checkpoint, model_from_checkpoint,
                   non_finite_tensors, parse_config, read_meta, replace_file)

GPT2_NAMES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')  # OpenAI's four, by their hub names
HUB_FILES = ['config.json', 'model.safetensors']  # what a download fetches: each of the four has one safetensors file
# the weights a directory may hold, in the order they are looked for (an index.json lists a sharded model's files)
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json',
                'pytorch_model.bin', 'pytorch_model.bin.index.json')
# stored as Conv1D, (in, out), in GPT-2's files; nn.Linear's (out, in) in ours
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# non-parameter buffers that older GPT-2 files carry (the causal mask and its fill value): not weights, skipped
HF_BUFFERS = ('.attn.bias', '.attn.masked_bias')
SHAPE_KEYS = ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size')  # config.json's keys that fix the shapes
GELU_OF_ACTIVATION = {'gelu_new': 'tanh', 'gelu_pytorch_tanh': 'tanh', 'gelu': 'none'}  # config.json -> GPTConfig
GPT2_META = {'tokenizer': 'gpt2', 'vocab_size': 50257}  # the GPT-2 BPE tokenizer's own size, whatever the model's
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which model.py uses, and GPT-2's
DOWNLOAD_TIMEOUT_S = 10  # huggingface_hub's own default for its first request: without a network, fail this fast


# ----------------------------------------------------------------------------------------------------------
# in: a GPT-2 directory (or name) -> a checkpoint-shaped dict that utils.model_from_checkpoint builds a GPT from

def check_init_from(init_from: str, own: tuple[str, ...]) -> None:
    """Raise ConfigError unless init_from is one of own (the caller's own values, its default first: 'scratch' or
    'resume'), a GPT-2 name or a directory that is not a training out_dir of this repo."""
    if init_from in own or init_from in GPT2_NAMES:
        return
    if os.path.isdir(init_from) and _is_training_out_dir(init_from):
        # sample.py reads out_dir by default (init_from='resume'); train.py starts from scratch unless told
        how = f"--out_dir={init_from}" + (" (init_from='resume' is the default)" if own[0] == 'resume'
                                          else " --init_from=resume")
        raise ConfigError(f"{_training_out_dir_is(init_from)}: use {how}")
    if os.path.isdir(init_from):
        return
    raise ConfigError(f"init_from must be one of {own + GPT2_NAMES}, or a directory holding a Hugging Face GPT-2 "
                      f"(config.json + model.safetensors); got {init_from!r}, which is none of these")


def load(source: str, block_size: int | None = None) -> dict:
    """Read a GPT-2 by name (the hub's cache, else a download) or from a directory, as a checkpoint-shaped dict:

      model       our state_dict (nn.Linear layout, lm_head.weight tied to transformer.wte.weight), on the CPU
      model_args  GPTConfig's fields, from config.json; attn='sdpa' and dropout=0.0 until the caller overrides them
      meta        what the tokens mean: meta.pkl beside config.json if there is one (a character vocabulary that
                  export() wrote), else GPT-2 BPE
      source      the directory the files came from

    block_size: keep only the first block_size positions (a shorter context than the checkpoint's, as nanoGPT's
    crop_block_size); None keeps them all. Raises CheckpointError (unusable files, or files not to be had) or
    ConfigError (a block_size longer than the checkpoint's), each with a message that says what to do.
    """
    hf_dir = _local_dir(source)
    if _is_training_out_dir(hf_dir):
        raise CheckpointError(f"{_training_out_dir_is(hf_dir)}: read it with init_from='resume' and "
                              f"--out_dir={hf_dir} (utils.load_checkpoint)")
    args = _model_args(_read_json(os.path.join(hf_dir, 'config.json')), os.path.join(hf_dir, 'config.json'))
    tensors, where = _read_weights(hf_dir)
    state_dict = _from_hf(tensors, args, where)
    if bad := non_finite_tensors(state_dict):
        raise CheckpointError(f"{where} holds NaN or inf weights ({bad}): nothing can be trained or sampled from "
                              f"them; get the files again")
    if block_size is not None and (type(block_size) is not int or block_size < 1):
        raise ConfigError(f"block_size must be a positive int (or None for the checkpoint's {args['block_size']}), "
                          f"got {block_size!r}")
    if block_size is not None and block_size != args['block_size']:
        if block_size > args['block_size']:
            raise ConfigError(f"block_size={block_size} is longer than the {args['block_size']} positions of "
                              f"{source!r}: use --block_size={args['block_size']} or less")
        state_dict['transformer.wpe.weight'] = state_dict['transformer.wpe.weight'][:block_size]  # (block_size, C)
        args['block_size'] = block_size
    return {'model': state_dict, 'model_args': args, 'meta': _meta(hf_dir, args['vocab_size']), 'source': hf_dir}


def _is_training_out_dir(path: str) -> bool:
    """path holds our ckpt.pt and no GPT-2 weights: train.py's out_dir (whose config.json, if any, is train.py's
    settings, not a GPT-2's)."""
    return os.path.isfile(os.path.join(path, 'ckpt.pt')) and _weights_in(path) is None


def _training_out_dir_is(path: str) -> str:
    return (f"{path} is a training out_dir of this repo (it holds ckpt.pt and no Hugging Face weights), not a "
            f"Hugging Face GPT-2 directory")


def _download_hint(name: str) -> str:
    return (f"on a machine with network, run `hf download {name} config.json model.safetensors --local-dir {name}` "
            f"(or python -c \"from huggingface_hub import snapshot_download; snapshot_download('{name}', "
            f"allow_patterns={HUB_FILES}, local_dir='{name}')\"), copy that directory here and pass "
            f"--init_from=/path/to/{name}")


def _weights_in(hf_dir: str) -> str | None:
    """The first of WEIGHT_FILES that hf_dir holds, or None."""
    return next((n for n in WEIGHT_FILES if os.path.isfile(os.path.join(hf_dir, n))), None)


def is_hf_dir(path: str) -> bool:
    """Whether path looks like a Hugging Face GPT-2 directory: config.json and one of WEIGHT_FILES."""
    return os.path.isfile(os.path.join(path, 'config.json')) and _weights_in(path) is not None


def _local_dir(source: str) -> str:
    """The directory holding source's files: source itself, or the hub cache's copy (downloaded when missing)."""
    if os.path.isdir(source):
        return source
    if source not in GPT2_NAMES:
        raise CheckpointError(f"{source!r} is neither a directory nor one of the GPT-2 names {GPT2_NAMES}")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise CheckpointError(f"loading {source!r} by name needs huggingface_hub (pip install huggingface_hub); "
                              f"or, {_download_hint(source)}") from None
    # the cache first, never touching the network: the hub's short name, then the organisation's name it redirects to
    for repo_id in (source, f'openai-community/{source}'):
        try:
            path = snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True)
        except Exception:  # not cached (LocalEntryNotFoundError), or a cache entry that cannot be read
            continue
        if is_hf_dir(path):
            return path
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"GPT-2 {source!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
                              f"HF_HUB_OFFLINE is set, so it cannot be downloaded: {_download_hint(source)}")
    try:
        return snapshot_download(source, allow_patterns=HUB_FILES, etag_timeout=DOWNLOAD_TIMEOUT_S)
    except Exception as e:  # no network, a proxy, the hub down: the cause goes into the message
        raise CheckpointError(f"could not download GPT-2 {source!r} from the Hugging Face hub ({_one_line(e)}) and "
                              f"it is not in the cache ({constants.HF_HUB_CACHE}): {_download_hint(source)}") from e


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {first_line(e)}"


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found: a Hugging Face GPT-2 directory holds config.json and "
                              f"model.safetensors (or pytorch_model.bin)")
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt ({_one_line(e)}): download or export it again") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object: download or export it again")
    return data


def _model_args(config: dict, path: str) -> dict:
    """GPTConfig's fields from a GPT-2 config.json, refusing what our GPT would not compute exactly."""
    if config.get('model_type') != 'gpt2':
        raise CheckpointError(f"{path} has model_type={config.get('model_type')!r}: only GPT-2 ('gpt2') loads here")
    missing = [k for k in SHAPE_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}, which give the model's shape: download or export it again")
    not_int = {k: config[k] for k in SHAPE_KEYS if not isinstance(config[k], int) or isinstance(config[k], bool)}
    if not_int:
        raise CheckpointError(f"{path} has {not_int}: these give the model's shape and must be integers")
    # absent keys mean what GPT2Config's defaults say, as in transformers
    activation = config.get('activation_function', 'gelu_new')
    if activation not in GELU_OF_ACTIVATION:
        raise CheckpointError(f"{path} has activation_function={activation!r}; the MLP here computes only "
                              f"{sorted(GELU_OF_ACTIVATION)}")
    eps = config.get('layer_norm_epsilon', LAYER_NORM_EPS)
    if eps != LAYER_NORM_EPS:
        raise CheckpointError(f"{path} has layer_norm_epsilon={eps}; model.py's LayerNorm uses {LAYER_NORM_EPS}, "
                              f"so its logits would differ")
    n_inner = config.get('n_inner')
    if n_inner is not None and n_inner != 4 * config['n_embd']:
        raise CheckpointError(f"{path} has n_inner={n_inner}; the MLP here is 4 * n_embd = {4 * config['n_embd']} wide")
    for key, supported in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                           ('add_cross_attention', False), ('tie_word_embeddings', True)):
        if config.get(key, supported) != supported:
            raise CheckpointError(f"{path} has {key}={config[key]!r}; the GPT here supports only {key}={supported}")
    args = dict(n_layer=config['n_layer'], n_head=config['n_head'], n_embd=config['n_embd'],
                block_size=config['n_positions'], vocab_size=config['vocab_size'], dropout=0.0, bias=True,
                attn='sdpa', gelu_approximate=GELU_OF_ACTIVATION[activation])
    try:
        GPTConfig(**args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} describes no model this GPT can build: {e}") from e
    return args


def _read_weights(hf_dir: str) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of hf_dir's weight file(s), and where they came from (for messages)."""
    name = _weights_in(hf_dir)
    if name is None:
        raise CheckpointError(f"{hf_dir} holds none of {list(WEIGHT_FILES)}: a Hugging Face GPT-2 directory holds "
                              f"config.json and model.safetensors (or pytorch_model.bin)")
    path = os.path.join(hf_dir, name)
    if not name.endswith('.index.json'):
        return _read_tensor_file(path), path
    weight_map = _read_json(path).get('weight_map')
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path} has no weight_map of tensor names to file names: download or export it again")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_read_tensor_file(os.path.join(hf_dir, shard)))
    return tensors, f"{hf_dir} ({name})"


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise CheckpointError("model.safetensors files need the safetensors package: pip install safetensors") from None
    return safetensors.torch


def _read_tensor_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} not found (its index lists it): download the missing file again")
    try:
        if path.endswith('.safetensors'):
            tensors = _safetensors().load_file(path)
        else:
            # weights_only: a weights file is tensors, nothing that needs arbitrary unpickling
            tensors = torch.load(path, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or not a weights file ({_one_line(e)}): download or export "
                              f"it again") from e
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors: download or export it again")
    return tensors


def _from_hf(tensors: dict[str, torch.Tensor], args: dict, where: str) -> dict[str, torch.Tensor]:
    """GPT-2's tensors renamed and transposed into our GPT's state_dict, each checked against its shape."""
    # OpenAI's files name GPT2Model's tensors (h.0.attn...), save_pretrained GPT2LMHeadModel's (transformer.h.0...)
    hf = {k.removeprefix('transformer.'): t for k, t in tensors.items() if not k.endswith(HF_BUFFERS)}
    lm_head = hf.pop('lm_head.weight', None)
    with torch.device('meta'):  # the shapes only: no memory, no initialisation
        shapes = {k: p.shape for k, p in GPT(GPTConfig(**args)).state_dict().items() if k != 'lm_head.weight'}
    shape_of = (f"config.json's n_layer={args['n_layer']}, n_embd={args['n_embd']}, "
                f"n_positions={args['block_size']}, vocab_size={args['vocab_size']}")
    state_dict = {}
    for name, shape in shapes.items():
        key = name.removeprefix('transformer.')
        if key not in hf:
            raise CheckpointError(f"{where} lacks the tensor {key!r}, which a GPT-2 of {shape_of} has: the file is "
                                  f"incomplete or belongs to another model; download or export it again")
        t = hf.pop(key)
        conv1d = name.endswith(CONV1D)
        want = tuple(shape)[::-1] if conv1d else tuple(shape)
        if tuple(t.shape) != want:
            raise CheckpointError(f"tensor {key!r} in {where} has shape {tuple(t.shape)}, and a GPT-2 of {shape_of} "
                                  f"needs {want}: config.json and the weights disagree")
        state_dict[name] = t.t() if conv1d else t  # (out, in) for nn.Linear
    if hf:
        extra = sorted(hf)
        raise CheckpointError(f"{where} has {len(extra)} tensor(s) a GPT-2 of {shape_of} does not, e.g. "
                              f"{extra[:3]}: config.json and the weights disagree")
    if lm_head is not None and not torch.equal(lm_head, state_dict['transformer.wte.weight']):
        raise CheckpointError(f"{where} has an lm_head.weight that differs from the token embedding: the GPT here "
                              f"ties the two, so it cannot hold this model")
    state_dict['lm_head.weight'] = state_dict['transformer.wte.weight']  # tied, as in GPT-2
    return state_dict


def _meta(hf_dir: str, vocab_size: int) -> dict:
    """meta.pkl beside config.json (a character vocabulary that export() wrote), else GPT-2 BPE."""
    try:
        meta = read_meta(hf_dir)
    except Exception as e:
        raise CheckpointError(f"{os.path.join(hf_dir, 'meta.pkl')} is corrupt ({_one_line(e)}): export it again, "
                              f"or remove it if the model speaks GPT-2 BPE") from e
    if meta is None:
        return dict(GPT2_META)
    if 'stoi' in meta and len(meta['stoi']) > vocab_size:
        raise CheckpointError(f"{os.path.join(hf_dir, 'meta.pkl')} has {len(meta['stoi'])} characters and the model "
                              f"only {vocab_size} token ids: the meta.pkl belongs to another model")
    return meta


# ----------------------------------------------------------------------------------------------------------
# out: our GPT -> config.json + model.safetensors (+ meta.pkl)

def check_export_dir(hf_dir: str) -> None:
    """Raise CheckpointError unless hf_dir is new or empty: what it holds would be replaced (a model, or a dataset's
    meta.pkl by a character model's)."""
    existing = [n for n in ('config.json', *WEIGHT_FILES) if os.path.isfile(os.path.join(hf_dir, n))]
    if existing:
        raise CheckpointError(f"{hf_dir} already holds a model ({', '.join(existing)}): export into a new "
                              f"--hf_dir, or move that one away first")
    try:
        held = sorted(os.listdir(hf_dir)) if os.path.isdir(hf_dir) else []
    except OSError as e:
        raise CheckpointError(f"cannot read {hf_dir} ({_one_line(e)}): choose another --hf_dir") from e
    if held:
        names = ', '.join(held[:5]) + (', ...' if len(held) > 5 else '')
        raise CheckpointError(f"{hf_dir} is not empty (it holds {names}): export into a new or empty directory")


def export(model: GPT, hf_dir: str, meta: dict | None = None) -> list[str]:
    """Write model (a GPT, not a torch.compile wrapper) as a Hugging Face GPT-2 directory; returns the paths written.

    The tensors keep their dtype and values (our checkpoints hold fp32). A model without biases (bias=False) gets
    zero biases, since GPT-2 always has them and zeros compute the same. meta: the model's vocabulary; a character
    one goes into meta.pkl beside the weights. Refuses an hf_dir that holds anything already (a model, or a dataset
    whose meta.pkl the export would replace), so nothing is lost.
    """
    if not isinstance(model, GPT):
        raise CheckpointError(f"export takes a GPT (for a compiled one, its _orig_mod), got {type(model).__name__}")
    bad = non_finite_tensors(model.state_dict())
    if bad:  # load() refuses such weights: writing them would make a directory nothing can read back
        raise CheckpointError(f"refusing to export: the model's weights hold NaN or inf ({bad})")
    check_export_dir(hf_dir)
    cfg = model.config
    tensors = {}
    for name, t in model.state_dict().items():
        if name == 'lm_head.weight':
            continue  # tied to transformer.wte.weight; GPT-2's files keep one copy
        t = t.detach().cpu()
        tensors[name] = (t.t() if name.endswith(CONV1D) else t).contiguous()  # Conv1D's (in, out)
    for name, module in model.named_modules():
        if name != 'lm_head' and isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is None:
            size = module.out_features if isinstance(module, nn.Linear) else module.normalized_shape[0]
            tensors[f'{name}.bias'] = torch.zeros(size, dtype=module.weight.dtype)
    char = meta is not None and 'stoi' in meta
    # GPT-2's <|endoftext|> is id 50256: only a GPT-2 BPE model with that id has it
    eot = 50256 if not char and cfg.vocab_size > 50256 else None
    config = {
        'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
        'vocab_size': cfg.vocab_size, 'n_positions': cfg.block_size, 'n_embd': cfg.n_embd,
        'n_layer': cfg.n_layer, 'n_head': cfg.n_head, 'n_inner': None,
        'activation_function': 'gelu_new' if cfg.gelu_approximate == 'tanh' else 'gelu',
        'layer_norm_epsilon': LAYER_NORM_EPS,
        'resid_pdrop': cfg.dropout, 'embd_pdrop': cfg.dropout, 'attn_pdrop': cfg.dropout,
        'initializer_range': 0.02, 'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False,
        'reorder_and_upcast_attn': False, 'tie_word_embeddings': True, 'use_cache': True,
        'bos_token_id': eot, 'eos_token_id': eot,
    }

    save_file = _safetensors().save_file
    written = []

    def write(name: str, save) -> None:
        path = os.path.join(hf_dir, name)
        replace_file(path, save)  # an interrupted export leaves no half-written file under its name
        written.append(path)

    made = not os.path.exists(hf_dir)
    try:
        os.makedirs(hf_dir, exist_ok=True)
        write('model.safetensors', lambda p: _save_safetensors(save_file, tensors, p))
        write('config.json', lambda p: _write_text(p, json.dumps(config, indent=2, sort_keys=True) + '\n'))
        if char:
            write('meta.pkl', lambda p: _write_bytes(p, pickle.dumps(meta)))
    except BaseException as e:  # an error or Ctrl-C: hf_dir goes back to what it was (new or empty), to try again
        for path in written:
            os.remove(path)
        if made and os.path.isdir(hf_dir) and not os.listdir(hf_dir):
            os.rmdir(hf_dir)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write into {hf_dir} ({_one_line(e)}): choose another --hf_dir") from e
        raise
    return written


def _save_safetensors(save_file, tensors: dict, path: str) -> None:
    save_file(tensors, path, metadata={'format': 'pt'})
    # save_file creates its file readable by its owner only (0600); config.json and meta.pkl, written with open(),
    # get the user's usual permissions, and so does this one
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _write_text(path: str, text: str) -> None:
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, 'wb') as f:
        f.write(data)


def export_checkpoint(out_dir: str, hf_dir: str) -> list[str]:
    """Export out_dir/ckpt.pt (one of our checkpoints) to hf_dir; returns the paths written."""
    check_export_dir(hf_dir)  # before the checkpoint is read, which can take a while
    ckpt = load_checkpoint(out_dir, 'cpu')
    # attn='sdpa': nothing runs here, and it builds on any machine whatever the checkpoint was trained with
    model = model_from_checkpoint(ckpt, attn='sdpa')  # CheckpointError when the weights do not fit its settings
    return export(model, hf_dir, ckpt.get('meta'))


@dataclass
class ExportConfig:
    out_dir: str = 'out'  # the directory with our ckpt.pt
    hf_dir: str = ''  # the directory to write config.json + model.safetensors into (created; must be new or empty)


USAGE = "python hf_gpt2.py export --out_dir=OUT_DIR --hf_dir=HF_DIR"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in HELP_FLAGS:
        print(f"{__doc__.strip()}\n\nusage: {USAGE}")
        return
    try:
        if not argv or argv[0] != 'export':
            raise ConfigError(f"usage: {USAGE} (loading needs no command: --init_from=gpt2 or "
                              f"--init_from=PATH in train.py and sample.py)")
        cfg = parse_config(argv[1:], ExportConfig)
        if not cfg.hf_dir:
            raise ConfigError(f"--hf_dir is required: {USAGE}")
        written = export_checkpoint(cfg.out_dir, cfg.hf_dir)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing was exported (--hf_dir is as it was)")
    print(f"wrote {', '.join(written)}")
    print(f"load it with transformers.GPT2LMHeadModel.from_pretrained({cfg.hf_dir!r}), "
          f"or here with --init_from={cfg.hf_dir}")


if __name__ == '__main__':
    main()
