"""hf_gpt2.py: a Hugging Face GPT-2 loads with transformers' logits, ours exports to transformers with ours, import ->
export is bit-identical, bad files and a missing network give clear errors, and train.py / sample.py take
init_from=<dir>. The tests that compare with transformers skip where it is not installed (it is a test-only
dependency); the rest need only safetensors."""

import json
import os
import re
import shutil
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import hf_gpt2
from helpers import ROOT, TIKTOKEN_CACHE, TRITON_DEVICE, tiny_config
from model import GPT, GPTConfig
from utils import CheckpointError, ConfigError, model_from_checkpoint, save_checkpoint

# the small GPT-2 of these tests: head dim 16, a context of 128 positions, a vocabulary of 256
TINY = dict(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=256)
# fp32 logits of one model through two code paths differ by rounding in the order of the sums only: measured max
# abs difference here (torch 2.14, transformers 5.25, the Triton 3.8 interpreter) 6e-7 to 1e-6 at logits of size
# ~2; 1e-5 allows ~10x that, and a wrong mapping (a transpose, a bias, the GELU) shows up at >1e-4
ATOL = 1e-5
CHARS = sorted(set("\n !',.:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))  # a 62-character vocabulary
CHAR_META = {'tokenizer': 'char', 'vocab_size': len(CHARS), 'stoi': {c: i for i, c in enumerate(CHARS)},
             'itos': dict(enumerate(CHARS))}
ATTNS = ['sdpa', 'naive', 'triton']


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Add noise to every parameter: a fresh init has zero biases and unit LayerNorm gains, which would hide a
    bias or gain mapped to the wrong place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


def all_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Every position's logits, (B, T, vocab): GPT.forward returns them all when given targets (any will do)."""
    logits, _ = model(idx, targets=idx)
    return logits


def save_ours(model: GPT, out_dir, meta: dict | None) -> None:
    """model as a checkpoint in out_dir, in train.py's format."""
    save_checkpoint({'model': model.state_dict(), 'optimizer': {}, 'model_args': vars(model.config).copy(),
                     'iter_num': 1, 'best_val_loss': 0.0, 'config': {}, 'meta': meta}, str(out_dir))


def our_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=len(CHARS), bias=True, attn='sdpa')
    model = GPT(GPTConfig(**{**args, **kw}))
    perturb_(model, seed)
    return model.eval()


@pytest.fixture(scope='module')
def hf_model():
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    config = transformers.GPT2Config(**TINY, bos_token_id=0, eos_token_id=0)  # ids inside the tiny vocabulary
    model = transformers.GPT2LMHeadModel(config)
    perturb_(model, 0)
    return model.eval()


@pytest.fixture(scope='module')
def hf_dir(hf_model, tmp_path_factory) -> str:
    """The tiny GPT-2 as save_pretrained writes it: config.json + model.safetensors."""
    path = tmp_path_factory.mktemp('hf-tiny')
    hf_model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope='module')
def hf_bin_dir(hf_model, hf_dir, tmp_path_factory) -> str:
    """The tiny GPT-2 laid out as OpenAI's original pytorch_model.bin: GPT2Model's names (no 'transformer.'), and
    the causal-mask buffers attn.bias and attn.masked_bias beside the weights (transformers no longer writes .bin)."""
    path = tmp_path_factory.mktemp('hf-tiny-bin')
    n = TINY['n_positions']
    state_dict = {k.removeprefix('transformer.'): v for k, v in hf_model.state_dict().items() if k != 'lm_head.weight'}
    for i in range(TINY['n_layer']):
        state_dict[f'h.{i}.attn.bias'] = torch.tril(torch.ones(n, n, dtype=torch.bool)).view(1, 1, n, n)
        state_dict[f'h.{i}.attn.masked_bias'] = torch.tensor(-1e4)
    torch.save(state_dict, path / 'pytorch_model.bin')
    (path / 'config.json').write_text(open(f'{hf_dir}/config.json').read())
    return str(path)


# ----------------------------------------------------------------------------------------------------------
# in: logits equal transformers'

@pytest.fixture
def fp32_matmuls():
    """fp32 matmuls in fp32 on a GPU too: train.py lets them run in TF32, which would be the error measured."""
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')
    yield
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize('attn', ATTNS)
def test_logits_equal_transformers(hf_model, hf_dir, attn, fp32_matmuls):
    device = TRITON_DEVICE if attn == 'triton' else 'cpu'
    idx = torch.randint(0, TINY['vocab_size'], (2, TINY['n_positions']), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf_model(idx).logits  # (B, T, vocab)
        model = model_from_checkpoint(hf_gpt2.load(hf_dir), attn=attn).to(device).eval()
        got = all_logits(model, idx.to(device)).cpu()
    assert model.config.gelu_approximate == 'tanh' and model.config.block_size == TINY['n_positions']
    assert (got - want).abs().max() <= ATOL


def test_bin_file_with_openai_names_and_mask_buffers(hf_model, hf_bin_dir):
    idx = torch.randint(0, TINY['vocab_size'], (2, 50), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf_model(idx).logits
        ckpt = hf_gpt2.load(hf_bin_dir)
        got = all_logits(model_from_checkpoint(ckpt).eval(), idx)
        # GPT-2's GELU is the tanh approximation: with the exact one the logits move by far more than ATOL,
        # so the comparison above does check the setting
        exact_gelu = all_logits(model_from_checkpoint(ckpt, gelu_approximate='none').eval(), idx)
    assert (got - want).abs().max() <= ATOL
    assert (exact_gelu - want).abs().max() > 10 * ATOL


def test_tied_embedding_stays_tied(hf_dir):
    model = model_from_checkpoint(hf_gpt2.load(hf_dir))
    assert model.lm_head.weight is model.transformer.wte.weight


def test_block_size_crops_the_positions(hf_model, hf_dir):
    ckpt = hf_gpt2.load(hf_dir, block_size=16)
    assert ckpt['model_args']['block_size'] == 16
    assert torch.equal(ckpt['model']['transformer.wpe.weight'], hf_model.transformer.wpe.weight[:16])
    with pytest.raises(ConfigError, match=r"block_size=129 is longer than the 128 positions.*--block_size=128"):
        hf_gpt2.load(hf_dir, block_size=129)


@pytest.mark.parametrize('block_size', [-1, 0, True, 2.5], ids=str)
def test_a_block_size_that_is_not_a_positive_int_is_refused(hf_dir, block_size):
    """Regression: -1, 0 and True came back as the model's block_size (with 127, 0 or 1 positions), 2.5 a TypeError."""
    with pytest.raises(ConfigError, match=r"block_size must be a positive int \(or None for the checkpoint's 128\)"):
        hf_gpt2.load(hf_dir, block_size=block_size)


def test_export_refuses_what_load_would_refuse(tmp_path):
    """Regression: weights holding NaN were written (load refuses them), and a module other than a GPT failed with an
    AttributeError."""
    model = our_model()
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float('nan')
    with pytest.raises(CheckpointError, match=r"refusing to export: the model's weights hold NaN or inf"):
        hf_gpt2.export(model, str(tmp_path / 'hf'))
    with pytest.raises(CheckpointError, match=r"export takes a GPT .*, got Linear"):
        hf_gpt2.export(torch.nn.Linear(2, 2), str(tmp_path / 'hf'))
    assert not (tmp_path / 'hf').exists()


def test_meta_is_gpt2_bpe_without_a_meta_pkl(hf_dir):
    assert hf_gpt2.load(hf_dir)['meta'] == {'tokenizer': 'gpt2', 'vocab_size': 50257}


# ----------------------------------------------------------------------------------------------------------
# out: our checkpoints in transformers

@pytest.mark.parametrize('kind', ['char-no-bias', 'bpe-bias-tanh'])
def test_export_loads_in_transformers_with_our_logits(kind, tmp_path, capsys):
    transformers = pytest.importorskip('transformers')
    if kind == 'char-no-bias':  # how train.py trains by default: no biases, exact GELU, a character vocabulary
        model, meta = our_model(bias=False), CHAR_META
    else:
        model, meta = our_model(bias=True, gelu_approximate='tanh', vocab_size=300), None
    save_ours(model, tmp_path / 'out', meta)
    hf_gpt2.main(['export', f'--out_dir={tmp_path / "out"}', f'--hf_dir={tmp_path / "hf"}'])
    assert 'wrote' in capsys.readouterr().out
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'hf').eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = all_logits(model, idx)
        got = hf_model(idx).logits
    assert hf_model.config.vocab_size == model.config.vocab_size and got.dtype == torch.float32
    assert (got - want).abs().max() <= ATOL
    if meta is not None:
        with open(tmp_path / 'hf' / 'meta.pkl', 'rb') as f:
            assert pickle.load(f) == meta
    else:
        assert not (tmp_path / 'hf' / 'meta.pkl').exists()


def test_import_then_export_is_bit_identical(hf_dir, tmp_path):
    from safetensors.torch import load_file
    save_ours(model_from_checkpoint(hf_gpt2.load(hf_dir)), tmp_path / 'out', None)
    hf_gpt2.export_checkpoint(str(tmp_path / 'out'), str(tmp_path / 'hf'))
    before, after = load_file(f'{hf_dir}/model.safetensors'), load_file(tmp_path / 'hf' / 'model.safetensors')
    assert sorted(after) == sorted(before)
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(after[name], t), name
    config = json.loads((tmp_path / 'hf' / 'config.json').read_text())
    original = json.loads(open(f'{hf_dir}/config.json').read())
    for key in ('n_layer', 'n_head', 'n_embd', 'n_positions', 'vocab_size', 'activation_function'):
        assert config[key] == original[key], key


def test_export_then_load_gives_the_same_model(tmp_path):
    model = our_model(bias=False)
    hf_gpt2.export(model, str(tmp_path), CHAR_META)
    ckpt = hf_gpt2.load(str(tmp_path))
    back = model_from_checkpoint(ckpt).eval()
    assert ckpt['meta'] == CHAR_META and back.config.gelu_approximate == 'none'
    idx = torch.randint(0, len(CHARS), (1, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(all_logits(back, idx), all_logits(model, idx))  # zero biases add exactly nothing


def test_exported_files_share_one_set_of_permissions(tmp_path):
    """Regression: model.safetensors was written readable by its owner only (0600), config.json and meta.pkl
    with the user's usual permissions."""
    hf_gpt2.export(our_model(bias=False), str(tmp_path / 'hf'), CHAR_META)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / 'hf').iterdir()}
    assert modes == dict.fromkeys(['model.safetensors', 'config.json', 'meta.pkl'], 0o666 & ~umask)


def test_export_never_overwrites_a_model(tmp_path):
    hf_gpt2.export(our_model(), str(tmp_path), None)
    before = (tmp_path / 'model.safetensors').read_bytes()
    with pytest.raises(CheckpointError, match=r"already holds a model \(config.json, model.safetensors\)"):
        hf_gpt2.export(our_model(seed=1), str(tmp_path), None)
    assert (tmp_path / 'model.safetensors').read_bytes() == before


def snapshot(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_export_never_writes_into_a_dataset_directory(tmp_path):
    """Regression: exporting a character model into a dataset directory (train.bin, val.bin, meta.pkl and no
    config.json) replaced the dataset's meta.pkl with the model's. Any directory that is not empty is refused."""
    data = tmp_path / 'data'
    data.mkdir()
    np.arange(300, dtype=np.uint16).tofile(data / 'train.bin')
    np.arange(30, dtype=np.uint16).tofile(data / 'val.bin')
    with open(data / 'meta.pkl', 'wb') as f:
        pickle.dump({**CHAR_META, 'itos': {}, 'stoi': {'x': 0}}, f)  # not the model's: a rewrite would show
    before = snapshot(data)
    save_ours(our_model(), tmp_path / 'out', CHAR_META)
    with pytest.raises(SystemExit) as e:
        hf_gpt2.main(['export', f'--out_dir={tmp_path / "out"}', f'--hf_dir={data}'])
    assert str(e.value.code) == (f"error: {data} is not empty (it holds meta.pkl, train.bin, val.bin): export into "
                                 f"a new or empty directory")
    with pytest.raises(CheckpointError, match=r"is not empty \(it holds meta.pkl, train.bin, val.bin\)"):
        hf_gpt2.export(our_model(), str(data), CHAR_META)
    assert snapshot(data) == before


def test_export_into_a_file_is_a_clear_error(tmp_path):
    (tmp_path / 'a-file').write_text('keep me')
    with pytest.raises(CheckpointError, match=r"cannot write into .*a-file \(FileExistsError.*choose another"):
        hf_gpt2.export(our_model(), str(tmp_path / 'a-file'), None)
    assert (tmp_path / 'a-file').read_text() == 'keep me'


def test_export_command_errors_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: no checkpoint at .*ckpt.pt: train one first"):
        hf_gpt2.main(['export', f'--out_dir={tmp_path}', f'--hf_dir={tmp_path / "hf"}'])
    with pytest.raises(SystemExit, match=r"^error: --hf_dir is required"):
        hf_gpt2.main(['export', f'--out_dir={tmp_path}'])
    with pytest.raises(SystemExit, match=r"^error: usage: python hf_gpt2.py export"):
        hf_gpt2.main(['import', '--out_dir=x'])


# ----------------------------------------------------------------------------------------------------------
# bad files: each error names what is wrong

@pytest.fixture
def exported(tmp_path) -> str:
    """A GPT-2 directory made by our export (no transformers needed): 2 layers, 32 wide, vocabulary 62."""
    hf_gpt2.export(our_model(), str(tmp_path / 'hf'), None)
    return str(tmp_path / 'hf')


def edit_config(hf_dir: str, **change) -> None:
    config = json.loads(open(f'{hf_dir}/config.json').read())
    config.update(change)
    open(f'{hf_dir}/config.json', 'w').write(json.dumps(config))


def rewrite_weights(hf_dir: str, change) -> None:
    from safetensors.torch import load_file, save_file
    tensors = load_file(f'{hf_dir}/model.safetensors')
    change(tensors)
    save_file(tensors, f'{hf_dir}/model.safetensors')


def test_wrong_shape_names_the_tensor_and_both_shapes(exported):
    rewrite_weights(exported, lambda t: t.update({'transformer.h.0.mlp.c_fc.weight': torch.zeros(32, 100)}))
    with pytest.raises(CheckpointError, match=r"tensor 'h.0.mlp.c_fc.weight' in .*model.safetensors has shape "
                                              r"\(32, 100\), and a GPT-2 of .* needs \(32, 128\)"):
        hf_gpt2.load(exported)


def test_missing_tensor_is_named(exported):
    rewrite_weights(exported, lambda t: t.pop('transformer.h.1.ln_2.bias'))
    with pytest.raises(CheckpointError, match=r"model.safetensors lacks the tensor 'h.1.ln_2.bias'"):
        hf_gpt2.load(exported)


def test_non_finite_weights_are_refused(exported):
    """A GPT-2 directory with NaN weights would sample only garbage (as a NaN checkpoint of ours printed empty lines)."""
    rewrite_weights(exported, lambda t: t['transformer.h.1.mlp.c_proj.weight'].fill_(float('nan')))
    with pytest.raises(CheckpointError,
                       match=r"model.safetensors holds NaN or inf weights \(transformer\.h\.1\.mlp\.c_proj\.weight\)"):
        hf_gpt2.load(exported)


def test_config_with_fewer_layers_than_the_weights(exported):
    edit_config(exported, n_layer=1)
    with pytest.raises(CheckpointError, match=r"has 12 tensor\(s\) a GPT-2 of config.json's n_layer=1.* does not"):
        hf_gpt2.load(exported)


def test_untied_output_weights_are_refused(exported):
    rewrite_weights(exported, lambda t: t.update({'lm_head.weight': torch.randn(len(CHARS), 32)}))
    with pytest.raises(CheckpointError, match=r"lm_head.weight that differs from the token embedding"):
        hf_gpt2.load(exported)


@pytest.mark.parametrize('name,content', [
    ('model.safetensors', b'\x00\x01not a safetensors file'),
    ('model.safetensors', 'truncated'),
    ('pytorch_model.bin', b'PK\x03\x04 not a torch file'),
], ids=['garbage-safetensors', 'truncated-safetensors', 'garbage-bin'])
def test_corrupt_weights_file(exported, name, content):
    path = f'{exported}/model.safetensors'
    if content == 'truncated':
        data = open(path, 'rb').read()
        open(path, 'wb').write(data[:len(data) // 2])
    else:
        os.remove(path)
        open(f'{exported}/{name}', 'wb').write(content)
    with pytest.raises(CheckpointError, match=rf"{name} is corrupt or not a weights file \(.*\): download or export"):
        hf_gpt2.load(exported)


def test_corrupt_config_and_no_weights(exported):
    os.remove(f'{exported}/model.safetensors')
    with pytest.raises(CheckpointError, match=r"holds none of \['model.safetensors'.*holds config.json and model"):
        hf_gpt2.load(exported)
    open(f'{exported}/config.json', 'w').write('{"n_layer": 2,')
    with pytest.raises(CheckpointError, match=r"config.json is corrupt \(JSONDecodeError"):
        hf_gpt2.load(exported)


@pytest.mark.parametrize('change,message', [
    ({'layer_norm_epsilon': 1e-6}, r"layer_norm_epsilon=1e-06; model.py's LayerNorm uses 1e-05"),
    ({'activation_function': 'relu'}, r"activation_function='relu'; the MLP here computes only"),
    ({'scale_attn_by_inverse_layer_idx': True}, r"scale_attn_by_inverse_layer_idx=True; .* supports only"),
    ({'model_type': 'llama'}, r"model_type='llama': only GPT-2"),
    ({'n_embd': 31}, r"n_embd \(31\) must be divisible by n_head \(2\)"),
    ({'n_head': '2'}, r"\{'n_head': '2'\}: these give the model's shape and must be integers"),
], ids=['eps', 'activation', 'layer-scaling', 'llama', 'heads', 'string'])
def test_config_the_model_cannot_compute_is_refused(exported, change, message):
    edit_config(exported, **change)
    with pytest.raises(CheckpointError, match=message):
        hf_gpt2.load(exported)


def test_init_from_must_be_a_name_or_a_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"init_from must be one of \('scratch', 'resume', 'gpt2'.*got 'gpt3'"):
        tiny_config(tmp_path, tmp_path, init_from='gpt3')
    with pytest.raises(ConfigError, match=r"init_from must be one of \('resume', 'gpt2'"):
        from sample import SampleConfig
        SampleConfig(init_from='scratch')


@pytest.mark.parametrize('settings', [False, True], ids=['ckpt-only', 'with-train-config-json'])
def test_init_from_a_training_out_dir_says_to_use_out_dir(settings, tmp_path):
    """Regression: --init_from=<a training out_dir> said "config.json not found", or, with the config.json of
    train.py's settings beside ckpt.pt, "model_type=None: only GPT-2 loads here"."""
    save_ours(our_model(), tmp_path, CHAR_META)
    if settings:  # what train.py writes into its out_dir
        (tmp_path / 'config.json').write_text(json.dumps({'out_dir': str(tmp_path), 'n_layer': 2}))
    before = snapshot(tmp_path)
    what = (f"{tmp_path} is a training out_dir of this repo (it holds ckpt.pt and no Hugging Face weights), not "
            f"a Hugging Face GPT-2 directory")
    with pytest.raises(ConfigError) as e:
        hf_gpt2.check_init_from(str(tmp_path), own=('resume',))  # sample.py's
    assert str(e.value) == f"{what}: use --out_dir={tmp_path} (init_from='resume' is the default)"
    with pytest.raises(ConfigError) as e:
        hf_gpt2.check_init_from(str(tmp_path), own=('scratch', 'resume'))  # train.py's
    assert str(e.value) == f"{what}: use --out_dir={tmp_path} --init_from=resume"
    with pytest.raises(CheckpointError) as e:
        hf_gpt2.load(str(tmp_path))
    assert str(e.value) == f"{what}: read it with init_from='resume' and --out_dir={tmp_path} (utils.load_checkpoint)"
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------------------
# by name: the hub's cache, never a wait on a network that is not there

def run_python(code: str, hf_home, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, 'HF_HOME': str(hf_home), **env}
    for key in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE'):
        env.pop(key, None)  # HF_HOME decides where the cache is
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


# the time the lookup itself takes, measured inside the process (Python and torch start-up excluded): ~0.1 s here;
# a request to a network that does not answer waits huggingface_hub's 10 s timeout, so 5 s tells the two apart
LOOKUP_BOUND_S = 5.0
TIMED_SAMPLE = """
import time, sample
t0 = time.monotonic()
try:
    sample.main(['--init_from=gpt2', '--device=cpu'])
finally:
    print(f'{time.monotonic() - t0:.3f}')
"""


def test_by_name_offline_and_not_cached_fails_fast_saying_how(tmp_path):
    r = run_python(TIMED_SAMPLE, tmp_path / 'empty-hf-home', HF_HUB_OFFLINE='1')
    assert r.returncode == 1 and float(r.stdout.split()[-1]) < LOOKUP_BOUND_S
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: GPT-2 'gpt2' is not in the Hugging Face cache")
    assert 'HF_HUB_OFFLINE is set' in err and '`hf download gpt2 config.json model.safetensors --local-dir gpt2`' in err
    assert '--init_from=/path/to/gpt2' in err


def test_by_name_download_failure_fails_fast_saying_how(tmp_path):
    with socket.socket() as s:  # a local port nothing listens on: the connection is refused at once
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    r = run_python(TIMED_SAMPLE, tmp_path / 'empty-hf-home', HF_HUB_OFFLINE='0', HF_ENDPOINT=f'http://127.0.0.1:{port}')
    assert r.returncode == 1 and float(r.stdout.split()[-1]) < LOOKUP_BOUND_S
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: could not download GPT-2 'gpt2' from the Hugging Face hub")
    assert '`hf download gpt2' in err and '--init_from=/path/to/gpt2' in err


def test_by_name_offline_reads_the_hub_cache(exported, tmp_path):
    commit = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hf-home' / 'hub' / 'models--gpt2'
    (repo / 'snapshots' / commit).mkdir(parents=True)
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    for name in ('config.json', 'model.safetensors'):
        (repo / 'snapshots' / commit / name).write_bytes(open(f'{exported}/{name}', 'rb').read())
    r = run_python("import hf_gpt2; c = hf_gpt2.load('gpt2'); print(c['source'], c['model_args']['n_layer'])",
                   tmp_path / 'hf-home', HF_HUB_OFFLINE='1')
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(repo / 'snapshots' / commit), '2']


# ----------------------------------------------------------------------------------------------------------
# train.py and sample.py with init_from=<dir>

@pytest.fixture(scope='module')
def bpe_like_data(tmp_path_factory) -> str:
    """Token ids below the tiny model's 256, declared GPT-2 BPE as prepare.py declares it: a random sequence of 50
    ids repeated, so a model can learn it in a few steps."""
    path = tmp_path_factory.mktemp('bpe-like')
    period = np.random.default_rng(0).integers(0, TINY['vocab_size'], 50, dtype=np.uint16)
    np.tile(period, 100).tofile(path / 'train.bin')
    np.tile(period, 10).tofile(path / 'val.bin')
    with open(path / 'meta.pkl', 'wb') as f:
        pickle.dump({'tokenizer': 'gpt2', 'vocab_size': 50257}, f)
    return str(path)


def test_train_finetunes_from_a_hf_directory_and_resumes(hf_dir, bpe_like_data, tmp_path):
    from train import train
    out = tmp_path / 'out'
    summary = train(tiny_config(out, bpe_like_data, init_from=hf_dir, block_size=32, max_iters=8, eval_interval=4,
                                learning_rate=1e-3, decay_lr=False))
    val = [v for _, _, v in summary['losses']]
    assert val[-1] < val[0] - 0.5, val  # the repeated sequence is learned: ln(256) = 5.5 nats at the start
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    assert {k: ckpt['model_args'][k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size', 'bias')} \
        == dict(n_layer=2, n_head=4, n_embd=64, block_size=32, vocab_size=256, bias=True)
    assert ckpt['model_args']['gelu_approximate'] == 'tanh' and ckpt['config']['n_head'] == 4
    summary = train(tiny_config(out, bpe_like_data, init_from='resume', max_iters=10, eval_interval=5))
    assert summary['iter_num'] == 10


def test_finetune_config_runs_from_a_hf_directory(hf_dir, bpe_like_data, tmp_path):
    from train import TrainConfig, train
    from utils import parse_config
    # the shipped config as it is, made small and CPU-friendly on the command line
    cfg = parse_config([str(ROOT / 'config' / 'finetune_shakespeare.py'), f'--init_from={hf_dir}',
                        f'--data_dir={bpe_like_data}', f'--out_dir={tmp_path}', '--device=cpu', '--compile=False',
                        '--attn=sdpa', '--dtype=float32', '--block_size=32', '--batch_size=2', '--max_iters=2',
                        '--eval_interval=2', '--eval_iters=1',
                        '--always_save_checkpoint=True'], TrainConfig)  # saved even if 2 steps do not improve val
    assert train(cfg)['iter_num'] == 2
    model_args = torch.load(tmp_path / 'ckpt.pt', weights_only=True)['model_args']
    assert model_args['n_head'] == TINY['n_head'] and model_args['dropout'] == 0.1  # the checkpoint's, the config's


def test_train_cli_errors_for_bad_hf_files(exported, bpe_like_data, tmp_path):
    from train import main
    open(f'{exported}/model.safetensors', 'wb').write(b'junk')
    args = [f'--init_from={exported}', f'--data_dir={bpe_like_data}', f'--out_dir={tmp_path}', '--device=cpu',
            '--compile=False', '--attn=sdpa', '--block_size=16', '--batch_size=2', '--eval_iters=1']
    with pytest.raises(SystemExit, match=r"^error: .*model.safetensors is corrupt or not a weights file") as e:
        main(args)
    assert '\n' not in str(e.value)
    with pytest.raises(SystemExit, match=r"^error: init_from must be one of"):
        main(args[1:] + [f'--init_from={tmp_path / "nowhere"}'])


def test_bpe_data_past_a_small_models_vocabulary_blames_the_model(exported, bpe_like_data, tmp_path):
    """Regression: a small model without its meta.pkl (so taken as GPT-2 BPE) on BPE data was told to prepare the
    dataset again; the data is what was asked for, the model is what falls short."""
    from train import main
    data = tmp_path / 'data'
    shutil.copytree(bpe_like_data, data)
    np.full(1000, 50255, dtype=np.uint16).tofile(data / 'train.bin')
    with pytest.raises(SystemExit) as e:
        main([f'--init_from={exported}', f'--data_dir={data}', f'--out_dir={tmp_path / "out"}', '--device=cpu',
              '--compile=False', '--attn=sdpa', '--block_size=16', '--batch_size=2', '--eval_iters=1'])
    assert re.fullmatch(rf"error: .*train\.bin holds token id 50255, outside the model's vocabulary of {len(CHARS)} ids "
                        rf"\(0\.\.{len(CHARS) - 1}\): the model from .* has only {len(CHARS)} token ids; train it on "
                        r"data whose ids fit, or, for a character model, put its meta\.pkl beside its config\.json.*",
                        str(e.value.code))


def test_help_prints_the_usage(capsys):
    hf_gpt2.main(['--help'])
    assert "usage: python hf_gpt2.py export --out_dir=OUT_DIR --hf_dir=HF_DIR" in capsys.readouterr().out


def test_sample_from_an_exported_character_model(tmp_path):
    from sample import SampleConfig, generate_samples
    hf_gpt2.export(our_model(), str(tmp_path), CHAR_META)
    texts = generate_samples(SampleConfig(init_from=str(tmp_path), start='ROMEO:', num_samples=2, max_new_tokens=20,
                                          device='cpu'))
    assert len(texts) == 2
    for text in texts:
        assert text.startswith('ROMEO:') and len(text) == len('ROMEO:') + 20 and set(text) <= set(CHARS)


def test_sample_from_a_gpt2_bpe_directory(tmp_path, monkeypatch):
    import tiktoken

    from sample import SampleConfig, generate_samples
    if 'TIKTOKEN_CACHE_DIR' not in os.environ and TIKTOKEN_CACHE.is_dir():
        monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))
    try:
        enc = tiktoken.get_encoding('gpt2')
    except Exception as e:  # no network and no local copy of the BPE files
        pytest.skip(f"the GPT-2 BPE files cannot be loaded here ({type(e).__name__})")
    # GPT-2's vocabulary, a tiny body: no meta.pkl beside it, so the directory speaks GPT-2 BPE
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=enc.n_vocab, attn='sdpa'))
    hf_gpt2.export(model, str(tmp_path), None)
    text = generate_samples(SampleConfig(init_from=str(tmp_path), start='Hello there', num_samples=1,
                                         max_new_tokens=5, device='cpu'))[0]
    assert text.startswith('Hello there') and len(text) > len('Hello there')


# ----------------------------------------------------------------------------------------------------------
# model.py's GELU setting

def test_gelu_setting_is_checked_and_old_checkpoints_load_as_exact():
    with pytest.raises(ValueError, match=r"gelu_approximate must be 'none' or 'tanh', got 'fast'"):
        GPTConfig(gelu_approximate='fast')
    model = our_model()
    old_args = {k: v for k, v in vars(model.config).items() if k != 'gelu_approximate'}  # saved before the key
    old = model_from_checkpoint({'model': model.state_dict(), 'model_args': old_args})
    assert old.config.gelu_approximate == 'none' and old.transformer.h[0].mlp.gelu.approximate == 'none'


def test_an_interrupted_export_leaves_hf_dir_as_it_was(tmp_path, monkeypatch):
    """Regression: Ctrl-C while model.safetensors was being written left model.safetensors.tmp, and the same export
    run again refused the directory as not empty."""
    def interrupted(save_file, tensors, path):
        with open(path, 'wb') as f:
            f.write(b'half a file')
        raise KeyboardInterrupt

    monkeypatch.setattr(hf_gpt2, '_save_safetensors', interrupted)
    (tmp_path / 'empty').mkdir()
    for hf_dir in (tmp_path / 'new', tmp_path / 'empty'):
        with pytest.raises(KeyboardInterrupt):
            hf_gpt2.export(our_model(), str(hf_dir), None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['empty'] and not list((tmp_path / 'empty').iterdir())
