"""model.py: the three attention implementations agree, and shapes and settings are checked."""

import pytest
import torch

from helpers import TRITON_DEVICE
from model import GPT, GPTConfig

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0, bias=True)
# fp32, same weights: the implementations differ only in the order of the sums (and the kernel's online
# softmax). Measured max abs difference against naive on CPU (torch 2.14, triton 3.8 interpreter): ~1e-7 for
# logits and gradients; 1e-5 leaves 100x of room while any real bug (mask, scale, layout) shows up at >1e-2.
ATOL = 1e-5

IMPLS = ['sdpa', 'triton']


def build(attn: str, state_dict=None, **kw) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, **kw}, attn=attn))
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return model


@pytest.mark.parametrize('attn', IMPLS)
def test_logits_and_grads_match_naive(attn):
    device = TRITON_DEVICE if attn == 'triton' else 'cpu'
    ref = build('naive').to(device)
    other = build(attn, ref.state_dict()).to(device)
    torch.manual_seed(1)
    idx = torch.randint(0, 65, (2, 13), device=device)  # T=13: not a multiple of any tile
    targets = torch.randint(0, 65, (2, 13), device=device)
    out = {}
    for name, model in (('naive', ref), (attn, other)):
        model.eval()  # no dropout
        logits, loss = model(idx, targets)
        loss.backward()
        out[name] = (logits.detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(out[attn][0], out['naive'][0], atol=ATOL, rtol=0)
    for n, g in out['naive'][1].items():
        torch.testing.assert_close(out[attn][1][n], g, atol=ATOL, rtol=0, msg=lambda m: f"grad of {n}: {m}")


@pytest.mark.parametrize('attn', IMPLS)
def test_checkpoint_moves_between_implementations(attn):
    # identical parameter names and shapes: a state_dict from one loads strictly into the other
    assert build('naive').state_dict().keys() == build(attn).state_dict().keys()


def test_inference_returns_last_position_only():
    model = build('sdpa').eval()
    logits, loss = model(torch.zeros(3, 5, dtype=torch.long))
    assert logits.shape == (3, 1, 65) and loss is None


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match=r"length 17.*block_size is only 16"):
        build('sdpa')(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize('shape', [(0, 4), (2, 0)], ids=['no-rows', 'no-tokens'])
def test_empty_input_is_a_clear_error(shape):
    """Regression: sdpa returned a NaN loss for no tokens, triton named a (B, H, T, D) shape the caller never made."""
    idx = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"idx must hold at least one row of at least one token"):
        build('sdpa')(idx, idx)


def test_wrong_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        build('sdpa')(torch.zeros(16, dtype=torch.long))


@pytest.mark.parametrize('kw,msg', [
    (dict(attn='flash'), r"attn must be one of"),
    (dict(n_embd=30, n_head=4), r"n_embd \(30\) must be divisible by n_head \(4\)"),
    (dict(bias='no'), r"bias must be True or False, got 'no'"),  # bool('no') turned biases on
    (dict(dropout='0.1'), r"dropout must be in \[0, 1\), got '0.1'"),
    # at the first forward this was flash_attn's error, which does not name the model's settings
    (dict(attn='triton', n_embd=48, n_head=2), r"attn='triton' supports head dims \(16, 32, 64, 128\), and "
                                                r"n_embd=48 / n_head=2 is 24: change n_head, or use attn='sdpa'"),
], ids=['bad-attn', 'indivisible-heads', 'bias-str', 'dropout-str', 'triton-head-dim-24'])
def test_config_is_validated(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GPTConfig(**{**SMALL, 'attn': 'sdpa', **kw})


def test_generate_crops_context_to_block_size():
    model = build('sdpa').eval()
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=30, temperature=1.0, top_k=5)
    assert out.shape == (1, 33)  # ran past block_size=16 by cropping the context
    assert int(out.max()) < 65


def test_weight_tying_and_init():
    model = build('sdpa')
    assert model.lm_head.weight is model.transformer.wte.weight
    # GPT-2's scaled init of the residual projections: std 0.02 / sqrt(2 * n_layer) = 0.01 here
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - 0.01) < 0.002


def test_flops_per_token_convention():
    model = build('sdpa')
    N = model.get_num_params()
    L, H, Q, T = 2, 2, 16, 16
    assert model.flops_per_token() == 6 * N + 12 * L * H * Q * T


def test_optimizer_groups_cover_every_parameter_once():
    model = build('sdpa')
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, nodecay = opt.param_groups
    assert all(p.dim() >= 2 for p in decay['params']) and all(p.dim() < 2 for p in nodecay['params'])
    assert decay['weight_decay'] == 0.1 and nodecay['weight_decay'] == 0.0
    assert sum(p.numel() for g in opt.param_groups for p in g['params']) == sum(p.numel() for p in model.parameters())
