"""Resume: exact (N iterations + resume M are N + M straight, bit for bit on the CPU), and refused when the data's
tokens do not mean what the checkpoint's do; the data loader's checks on the token files."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from helpers import SHAKESPEARE, char_data, load_script, tiny_config  # noqa: F401 (fixture)
from train import ARCH_KEYS, RUNTIME_KEYS, TrainConfig, train
from model import GPT, GPTConfig
from utils import ConfigError, load_checkpoint, meta_problem, read_meta, tokenizer_of


def step_losses(out_dir) -> dict:
    """iter -> the training loss logged at that iteration, from out_dir/metrics.jsonl."""
    rows = [json.loads(line) for line in (out_dir / 'metrics.jsonl').read_text().splitlines()]
    return {r['iter']: r['train/step_loss'] for r in rows if 'train/step_loss' in r}


@pytest.mark.parametrize('dropout', [0.0, 0.1], ids=['no-dropout', 'dropout'])
def test_resume_is_exact(char_data, tmp_path, dropout):
    """Regression: resume used to reseed the data order from the iteration and lose dropout's random state,
    so 10 + 10 iterations scored differently from 20 straight (val 3.3441 vs 3.3824)."""
    straight = train(tiny_config(tmp_path / 'a', char_data, max_iters=8, eval_interval=4, dropout=dropout))
    train(tiny_config(tmp_path / 'b', char_data, max_iters=4, eval_interval=4, dropout=dropout))
    resumed = train(tiny_config(tmp_path / 'b', char_data, max_iters=8, eval_interval=4, dropout=dropout,
                                init_from='resume'))

    assert resumed['losses'][-1] == straight['losses'][-1]  # (8, train, val), exactly
    losses_a, losses_b = step_losses(tmp_path / 'a'), step_losses(tmp_path / 'b')
    assert [losses_b[i] for i in range(8)] == [losses_a[i] for i in range(8)]
    a, b = load_checkpoint(str(tmp_path / 'a'), 'cpu'), load_checkpoint(str(tmp_path / 'b'), 'cpu')
    for name, weight in a['model'].items():
        assert torch.equal(weight, b['model'][name]), name
    for p, state in a['optimizer']['state'].items():
        for k, v in state.items():
            assert torch.equal(v, b['optimizer']['state'][p][k]), (p, k)
    assert torch.equal(a['rng'][0]['torch'], b['rng'][0]['torch'])  # dropout's generator went on in step


def test_resume_refuses_data_with_other_characters(char_data, tmp_path):
    out = tmp_path / 'out'
    train(tiny_config(out, char_data, max_iters=2, eval_interval=2))
    good = (out / 'ckpt.pt').read_bytes()
    other = tmp_path / 'other_chars'
    prep = load_script('data/shakespeare_char/prepare.py')
    prep.prepare(SHAKESPEARE.read_text(encoding='utf-8')[:20_000] + 'é', str(other))  # 'é' is not in Shakespeare

    with pytest.raises(ConfigError, match=r"the checkpoint .*ckpt\.pt: characters \(65 ids\), the data "
                                          r".*other_chars: characters \(\d+ ids\); characters only in the "
                                          r"checkpoint .*: '.+', only in the data .*: 'é'"):
        train(tiny_config(out, other, init_from='resume', max_iters=4))
    assert (out / 'ckpt.pt').read_bytes() == good


def test_resume_refuses_bpe_data_for_a_character_checkpoint(char_data, tmp_path):
    out = tmp_path / 'out'
    train(tiny_config(out, char_data, max_iters=2, eval_interval=2))
    bpe = tmp_path / 'bpe'
    bpe.mkdir()
    for split in ('train.bin', 'val.bin'):
        shutil.copy(f'{char_data}/{split}', bpe / split)  # ids < 65: valid GPT-2 ids too
    (bpe / 'meta.pkl').write_bytes(pickle.dumps({'tokenizer': 'gpt2', 'vocab_size': 50257}))

    with pytest.raises(ConfigError, match=r"mean different things: the checkpoint .*: characters \(65 ids\), "
                                          r"the data .*bpe: GPT-2 BPE \(50257 ids\): train on data with the checkpoint.s tokens"):
        train(tiny_config(out, bpe, init_from='resume', max_iters=4))


def test_checkpoint_records_the_datasets_meta(char_data, tmp_path):
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    meta = load_checkpoint(str(tmp_path), 'cpu')['meta']
    with open(f'{char_data}/meta.pkl', 'rb') as f:
        assert meta == pickle.load(f)
    assert tokenizer_of(meta) == 'char'


def test_dataset_without_meta_is_refused_with_the_prepare_command(char_data, tmp_path):
    """Regression: a character dataset without meta.pkl silently trained as GPT-2 BPE."""
    data = tmp_path / 'data' / 'mine'
    data.mkdir(parents=True)
    for split in ('train.bin', 'val.bin'):
        shutil.copy(f'{char_data}/{split}', data / split)
    (data / 'prepare.py').write_text('')  # the dataset's own script, which the error names
    with pytest.raises(FileNotFoundError, match=r"meta\.pkl not found in .*mine: prepare the dataset first: "
                                                r"python \S*mine/prepare\.py"):
        train(tiny_config(tmp_path / 'out', data))
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()


@pytest.mark.parametrize('corruption', ['random bytes', 'odd size', 'meta.pkl'])
def test_data_files_are_checked_when_opened(char_data, tmp_path, corruption):
    """Regression: random bytes as train.bin ended in an IndexError traceback in the first forward."""
    data = tmp_path / 'data'
    shutil.copytree(char_data, data)
    raw = np.random.default_rng(0).integers(0, 2**16, 50_000, dtype=np.uint16).tobytes()
    if corruption == 'meta.pkl':
        (data / 'meta.pkl').write_bytes(raw[:100])
    else:
        (data / 'train.bin').write_bytes(raw if corruption == 'random bytes' else raw[:-1])
    expected = {'random bytes': r"train\.bin holds token id \d+, outside the model's vocabulary of 65 ids \(0\.\.64\)",
                'odd size': r"train\.bin is not a file of uint16 token ids",
                'meta.pkl': r"meta\.pkl is unreadable \(\w+: [^)]*\): prepare the dataset first"}[corruption]
    with pytest.raises(ConfigError, match=expected):
        train(tiny_config(tmp_path / 'out', data))


def test_arch_keys_are_the_fields_a_checkpoint_fixes():
    """ARCH_KEYS (a resumed run takes them from the checkpoint) are exactly the GPTConfig fields the saved weights
    cannot do without: changing one breaks loading them (a shape) or changes what they compute (n_head). The
    RUNTIME_KEYS may change between runs: the same weights compute the same function in eval mode."""
    base = dict(n_layer=1, n_head=2, n_embd=8, block_size=4, vocab_size=11, bias=True, dropout=0.0, attn='sdpa')
    torch.manual_seed(0)
    saved = GPT(GPTConfig(**base)).eval()
    for p in saved.parameters():
        torch.nn.init.normal_(p, std=0.5)  # GPT's init (std 0.02) attends almost uniformly, whatever n_head is
    idx = torch.randint(0, 11, (2, 4))
    want, _ = saved(idx)

    other = {'n_layer': 2, 'n_head': 4, 'n_embd': 16, 'block_size': 5, 'bias': False, 'gelu_approximate': 'tanh',
             'dropout': 0.1, 'attn': 'naive'}
    assert set(ARCH_KEYS) | set(RUNTIME_KEYS) == set(other)
    for key, value in other.items():
        model = GPT(GPTConfig(**{**base, key: value})).eval()
        try:
            model.load_state_dict(saved.state_dict())
        except RuntimeError:  # missing, unexpected or reshaped parameters
            fixed = True
        else:
            # sdpa vs naive differ by fp32 rounding only (~1e-6 here); another n_head changes the logits by O(1)
            fixed = not torch.allclose(model(idx)[0], want, atol=1e-5)
        assert fixed == (key in ARCH_KEYS), key
    settings = set(TrainConfig.__dataclass_fields__)
    assert set(ARCH_KEYS) | set(RUNTIME_KEYS) <= settings and 'vocab_size' not in settings


GOOD_META = {'tokenizer': 'char', 'vocab_size': 3, 'stoi': {'a': 0, 'b': 1, 'c': 2}, 'itos': {0: 'a', 1: 'b', 2: 'c'}}


@pytest.mark.parametrize('change,expected', [
    (dict(vocab_size='3'), "vocab_size is '3', not a whole number >= 1"),
    (dict(vocab_size=0), "vocab_size is 0, not a whole number >= 1"),
    (dict(tokenizer='bpe'), "tokenizer 'bpe' is neither 'char' nor 'gpt2'"),
    (dict(stoi=None), "a character vocabulary without its stoi and itos tables"),
    (dict(vocab_size=100), "its 3 characters do not map one to one onto the ids 0..99"),
    (dict(itos={0: 'a', 1: 'c', 2: 'b'}), "stoi and itos disagree"),
], ids=str)
def test_a_meta_that_would_mislead_is_refused_when_the_data_is_opened(change, expected, char_data, tmp_path):
    """Regression: train.py accepted meta.pkl files with a string vocab_size (then a TypeError), an unknown
    tokenizer (trained as GPT-2 BPE), no stoi, or vocab_size 100 for 65 characters; sample.py failed on them later."""
    assert meta_problem(GOOD_META) is None
    data = tmp_path / 'data'
    shutil.copytree(char_data, data)
    (data / 'meta.pkl').write_bytes(pickle.dumps({**GOOD_META, **change}))
    with pytest.raises(ConfigError) as e:
        train(tiny_config(tmp_path / 'out', data))
    assert "meta.pkl is not a sound dataset meta (" in str(e.value) and expected in str(e.value), str(e.value)
    assert not (tmp_path / 'out' / 'ckpt.pt').exists()


class _Payload:
    """A pickle that runs code when loaded: it calls os.mkdir on a path (a harmless stand-in for worse)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_meta_pkl_that_would_run_code_is_refused_unloaded(tmp_path):
    """Regression: read_meta used pickle.load, so a meta.pkl from anywhere could run any code; checkpoints were
    already loaded with weights_only=True."""
    marker = tmp_path / 'ran'
    (tmp_path / 'meta.pkl').write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ConfigError, match=r"meta\.pkl is unreadable \(UnpicklingError: it names posix\.mkdir, and "
                                          r"a meta\.pkl holds plain values only\)"):
        read_meta(str(tmp_path))
    assert not marker.exists()


def _as_nanogpt(out_dir) -> None:
    """Rewrite out_dir/ckpt.pt as nanoGPT's train.py saves one: no meta, rng or scaler, model_args without this
    repo's later settings, torch.compile's key prefix, best_val_loss as a tensor."""
    ckpt = torch.load(out_dir / 'ckpt.pt', weights_only=True)
    for key in ('meta', 'rng', 'scaler'):
        del ckpt[key]
    for key in ('attn', 'gelu_approximate'):
        del ckpt['model_args'][key]
    ckpt['model'] = {f'_orig_mod.{k}': v for k, v in ckpt['model'].items()}
    ckpt['best_val_loss'] = torch.tensor(ckpt['best_val_loss'])
    torch.save(ckpt, out_dir / 'ckpt.pt')


def test_a_nanogpt_checkpoint_resumes_on_data_that_fits_it(char_data, tmp_path):
    """Regression: KeyError: 'gelu_approximate', then (without its meta) the checkpoint was called GPT-2 BPE."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    _as_nanogpt(tmp_path)
    assert train(tiny_config(tmp_path, char_data, max_iters=4, init_from='resume'))['iter_num'] == 4
    assert load_checkpoint(str(tmp_path), 'cpu')['meta']['vocab_size'] == 65  # the data's, recorded from now on


def test_a_nanogpt_checkpoint_on_data_that_does_not_fit_names_both_sizes(char_data, tmp_path):
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    _as_nanogpt(tmp_path)
    other = tmp_path / 'other'
    load_script('data/shakespeare_char/prepare.py').prepare(SHAKESPEARE.read_text(encoding='utf-8').upper(),
                                                             str(other))
    with pytest.raises(ConfigError, match=r"records no vocabulary \(nanoGPT's do not\) and its model has 65 token ids, "
                                          r"which the data .*other \(characters \(39 ids\)\) does not fit"):
        train(tiny_config(tmp_path, other, max_iters=4, init_from='resume'))


def test_a_data_file_that_is_a_directory_is_named(char_data, tmp_path):
    """Regression: train.bin as a directory was "not found ... prepare the dataset first", which then failed."""
    data = tmp_path / 'data'
    shutil.copytree(char_data, data)
    (data / 'train.bin').unlink()
    (data / 'train.bin').mkdir()
    with pytest.raises(ConfigError, match=r"train\.bin in .*data is a directory, not a data file: move it away"):
        train(tiny_config(tmp_path / 'out', data))
