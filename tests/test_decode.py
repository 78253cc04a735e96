"""
flash_attn_with_kvcache against the fp32 reference with the bottom-right causal mask: new queries (Tq = 1, 2, 17,
64) against caches of 1 to 600 positions with ragged tails, per-row lengths that differ within a batch, every head
dim, the split-KV path forced and not; the lengths read on the device at every CUDA-graph replay; the call traced by
torch.compile without a graph break; bad input.

Without a GPU the kernel runs through Triton's interpreter (tests/conftest.py) on fp32 and fp16, on a sample of the
grid small enough for two CPU cores; bf16 and the long caches run on the GPU only (the interpreter computes tl.dot
on bf16 operands wrongly).
"""
import pytest
import torch

import flash_decode
from flash_decode import attention_with_kvcache_ref, flash_attn_with_kvcache
from helpers import nan_empty  # noqa: F401 (fixture: torch.empty filled with NaN, so an unwritten output shows)

GPU = torch.cuda.is_available()
DEVICE = "cuda" if GPU else "cpu"
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")

# Relative L2 error allowed against the fp32 reference, per dtype: the same budget as tests/test_flash_kernel.py's
# forward, for the same reasons. fp32 runs true fp32 dots, so only summation order differs (measured <= 2e-7 in
# the interpreter; 1e-5 leaves 50x). fp16/bf16 round P to the input dtype before the P@V dot and round O on the way
# out, about one half-ulp each (fp16 2.4e-4, bf16 2e-3; measured 2.6e-4 for fp16 in the interpreter): 8x that.
# The split merge adds fp32 work only.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# B, Tq, H, D, S (cache positions), per-row filled lengths, num_splits (None: the default, 1 off the GPU).
# Sampled from the grid rather than its product: every Tq, head dim and split mode appears, with lengths that are
# 1, a block multiple, one past one, ragged, and different within a batch; some splits get no keys at all.
CASES = [
    (1, 1, 1, 16, 1, [1], None),
    (2, 1, 2, 32, 70, [70, 3], None),
    (2, 1, 2, 64, 130, [129, 64], 3),
    (3, 1, 1, 16, 600, [600, 1, 65], 8),
    (1, 2, 2, 128, 65, [65], 2),
    (2, 2, 1, 64, 300, [2, 257], None),
    (3, 17, 1, 16, 100, [17, 100, 50], 4),
    (2, 64, 1, 32, 600, [600, 64], None),
    (1, 64, 1, 16, 200, [133], 5),
]
# the same on the GPU, plus caches long enough for the default split to cut them finely
GPU_CASES = CASES + [(1, 1, 12, 64, 4096, [4096], None), (4, 1, 3, 128, 3000, [2999, 1, 1500, 3000], None),
                     (8, 1, 12, 64, 1024, [1024, 1000, 17, 512, 1, 64, 65, 999], None)]


def _dtypes():
    dtypes = [torch.float32, torch.float16] + ([torch.bfloat16] if GPU else [])
    return [pytest.param(d, id=str(d).removeprefix("torch.")) for d in dtypes]


def _case_id(case):
    B, Tq, H, D, S, lens, splits = case
    return f"B{B}-Tq{Tq}-H{H}-D{D}-S{S}-lens{'_'.join(map(str, lens))}-splits{splits}"


def make_inputs(B, Tq, H, D, S, lens, dtype, device=DEVICE, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = [torch.randn(B, T, H, D, generator=g).to(device=device, dtype=dtype) for T in (Tq, S, S)]
    return q, k, v, torch.tensor(lens, dtype=torch.int32, device=device)


def rel_err(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def check(case, dtype, nan_empty=None):
    B, Tq, H, D, S, lens, splits = case
    q, k, v, seqlens = make_inputs(B, Tq, H, D, S, lens, dtype)
    out = flash_attn_with_kvcache(q, k, v, seqlens, num_splits=splits)
    assert out.shape == (B, Tq, H, D) and out.dtype == dtype
    err = rel_err(out, attention_with_kvcache_ref(q, k, v, seqlens))
    assert err <= TOL[dtype], f"rel. L2 error {err:.2e} > {TOL[dtype]:.0e}"


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("case", GPU_CASES if GPU else CASES, ids=_case_id)
def test_matches_reference(case, dtype, nan_empty):
    check(case, dtype)


@pytest.mark.parametrize("splits", [1, 3], ids=["one-split", "three-splits"])
def test_views_of_a_packed_cache(splits, nan_empty):
    """The model's layout: q a view of the qkv projection (B, T, 3, H, D), k and v views of one (B, S, 2, H, D)."""
    B, Tq, H, D, S = 2, 1, 2, 32, 90
    g = torch.Generator(device="cpu").manual_seed(1)
    qkv = torch.randn(B, Tq, 3, H, D, generator=g).to(DEVICE)
    kv = torch.randn(B, S, 2, H, D, generator=g).to(DEVICE)
    seqlens = torch.tensor([90, 41], dtype=torch.int32, device=DEVICE)
    q, k, v = qkv[:, :, 0], kv[:, :, 0], kv[:, :, 1]
    out = flash_attn_with_kvcache(q, k, v, seqlens, num_splits=splits)
    want = attention_with_kvcache_ref(q.contiguous(), k.contiguous(), v.contiguous(), seqlens)
    assert rel_err(out, want) <= TOL[torch.float32]


def test_split_counters_are_ready_for_the_next_call(nan_empty):
    """The last split of a (row, head) resets its counter: a second call merges again (a counter left at a
    non-zero value would merge too early, or never, and leave the NaN-poisoned output unwritten)."""
    case = (2, 1, 2, 16, 100, [100, 37], 4)
    for seed in range(3):
        B, Tq, H, D, S, lens, splits = case
        q, k, v, seqlens = make_inputs(B, Tq, H, D, S, lens, torch.float32, seed=seed)
        out = flash_attn_with_kvcache(q, k, v, seqlens, num_splits=splits)
        assert rel_err(out, attention_with_kvcache_ref(q, k, v, seqlens)) <= TOL[torch.float32]


def test_softmax_scale():
    q, k, v, seqlens = make_inputs(1, 2, 1, 16, 20, [20], torch.float32)
    out = flash_attn_with_kvcache(q, k, v, seqlens, softmax_scale=0.3)
    assert rel_err(out, attention_with_kvcache_ref(q, k, v, seqlens, softmax_scale=0.3)) <= TOL[torch.float32]


@pytest.mark.parametrize("splits", [None, 3], ids=["default-split", "three-splits"])
def test_compiles_without_a_graph_break(splits):
    """torch.compile(fullgraph=True) traces the call down to the op flashgpt::decode_fwd: no graph break, and no
    host sync (the eager check of the lengths' values reads them back, which a traced graph cannot hold); the
    compiled call still reads the lengths at run time."""
    compiled = torch.compile(flash_attn_with_kvcache, fullgraph=True, dynamic=False)
    for lens in ([40, 7], [1, 33]):
        q, k, v, seqlens = make_inputs(2, 1, 2, 16, 40, lens, torch.float32)
        out = compiled(q, k, v, seqlens, num_splits=splits)
        assert rel_err(out, attention_with_kvcache_ref(q, k, v, seqlens)) <= TOL[torch.float32], f"lengths {lens}"


@needs_gpu
@pytest.mark.parametrize("splits", [1, None], ids=["one-split", "default-split"])
def test_one_graph_serves_every_length(splits):
    """The lengths are read on the device: one captured call replayed after each in-place update of cache_seqlens
    attends to the new lengths, as a generation's decode step does."""
    B, H, D, S = 2, 12, 64, 2048
    q, k, v, seqlens = make_inputs(B, 1, H, D, S, [5, 9], torch.bfloat16)
    flash_attn_with_kvcache(q, k, v, seqlens, num_splits=splits)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = flash_attn_with_kvcache(q, k, v, seqlens, num_splits=splits)
    for lens in ([1, 1], [64, 1000], [2048, 777], [130, 2047]):
        seqlens.copy_(torch.tensor(lens, dtype=torch.int32))
        graph.replay()
        err = rel_err(out, attention_with_kvcache_ref(q, k, v, seqlens))
        assert err <= TOL[torch.bfloat16], f"lengths {lens}: rel. L2 error {err:.2e}"


@needs_gpu
def test_default_split_over_long_caches():
    """Batch 1 on a long cache: the default splits it across the whole GPU, and the merge is exact."""
    q, k, v, seqlens = make_inputs(1, 1, 12, 64, 32768, [32000], torch.bfloat16)
    assert rel_err(flash_attn_with_kvcache(q, k, v, seqlens), attention_with_kvcache_ref(q, k, v, seqlens)) <= \
        TOL[torch.bfloat16]


BAD = [
    ("Tq > S", lambda a: dict(q=torch.randn(2, 11, 2, 16, device=DEVICE)), r"11 queries.*only 10 positions"),
    ("length > S", lambda a: dict(cache_seqlens=torch.tensor([11, 5], dtype=torch.int32, device=DEVICE)),
     r"must lie in \[Tq, S\] = \[3, 10\].*\[5, 11\]"),
    ("length < Tq", lambda a: dict(cache_seqlens=torch.tensor([10, 2], dtype=torch.int32, device=DEVICE)),
     r"must lie in \[Tq, S\] = \[3, 10\].*\[2, 10\]"),
    ("lengths int64", lambda a: dict(cache_seqlens=a["cache_seqlens"].long()), r"must be int32, got torch.int64"),
    ("lengths one short", lambda a: dict(cache_seqlens=a["cache_seqlens"][:1]), r"shape \(2,\).*got \(1,\)"),
    ("lengths elsewhere", lambda a: dict(cache_seqlens=a["cache_seqlens"].to("meta")), r"cache_seqlens is on meta"),
    ("k and v differ", lambda a: dict(v_cache=a["v_cache"][:, :9]), r"k_cache \(2, 10, 2, 16\) and v_cache"),
    ("heads differ", lambda a: dict(q=a["q"][:, :, :1]), r"must agree in batch, heads and head dim"),
    ("head dim 24", lambda a: {n: torch.randn(*a[n].shape[:3], 24, device=DEVICE) for n in ("q", "k_cache", "v_cache")},
     r"head dim 24 is not supported"),
    ("dtypes differ", lambda a: dict(q=a["q"].half()), r"share one dtype"),
    ("strided head dim", lambda a: dict(q=a["q"].transpose(1, 3).contiguous().transpose(1, 3)), r"unit stride"),
    ("3-d q", lambda a: dict(q=a["q"][0]), r"q must be a 4-d tensor"),
    ("splits 0", lambda a: dict(num_splits=0), r"num_splits must be an int in \[1, 64\]"),
]


@pytest.mark.parametrize("name,change,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_says_what_is_wrong(name, change, msg):
    q, k, v, seqlens = make_inputs(2, 3, 2, 16, 10, [10, 5], torch.float32)
    args = dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens)
    args.update(change(args))
    with pytest.raises(ValueError, match=msg):
        flash_attn_with_kvcache(**args)


@pytest.mark.skipif(GPU, reason="on a GPU machine CPU tensors are refused before their dtype is looked at")
def test_bf16_in_the_interpreter_is_refused():
    """Regression: bf16 CPU tensors ran through the interpreter, whose bf16 dot products are wrong."""
    q, k, v, seqlens = make_inputs(1, 1, 2, 16, 10, [10], torch.float32)
    with pytest.raises(ValueError, match=r"flash_attn_with_kvcache: bfloat16 on the CPU runs in Triton's interpreter"):
        flash_attn_with_kvcache(q.bfloat16(), k.bfloat16(), v.bfloat16(), seqlens)


def test_reference_is_plain_causal_attention_when_the_cache_holds_only_the_queries():
    """The bottom-right mask with Tq = length is the ordinary causal mask: a check on the reference itself."""
    q, k, v, seqlens = make_inputs(2, 7, 2, 16, 7, [7, 7], torch.float32)
    want = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                            is_causal=True).transpose(1, 2)
    torch.testing.assert_close(attention_with_kvcache_ref(q, k, v, seqlens), want, atol=1e-6, rtol=0)


@pytest.mark.skipif(GPU, reason="the interpreter's path: a machine with a GPU runs the kernel compiled")
def test_default_split_is_one_off_the_gpu():
    """Through the interpreter on the CPU, num_splits=None runs one split: the same bits as asking for one."""
    q, k, v, seqlens = make_inputs(1, 1, 1, 16, 200, [200], torch.float32)
    default = flash_attn_with_kvcache(q, k, v, seqlens)
    assert torch.equal(default, flash_attn_with_kvcache(q, k, v, seqlens, num_splits=1))
    assert not torch.equal(default, flash_attn_with_kvcache(q, k, v, seqlens, num_splits=3))  # splits round otherwise


@pytest.mark.parametrize("programs,key_blocks,want", [
    (12, 16, 8),  # batch 1, GPT-2 heads, 1k cache: 2 key blocks per split at most
    (12, 512, 32),  # batch 1, 32k cache: 3 x 132 / 12 = 33 programs' worth, rounded down to 32
    (96, 512, 4),  # batch 8: 3 x 132 / 96 = 4
    (6, 4, 2),  # the char model: a 256-token cache has 4 blocks
    (400, 512, 1),  # enough programs without splitting
], ids=["b1-1k", "b1-32k", "b8-32k", "char", "full"])
def test_default_split_follows_the_h200_sweep(programs, key_blocks, want):
    """The choices results/generation.md measured best on a 132-multiprocessor H200 (no GPU needed: the count is an
    argument)."""
    assert flash_decode._default_num_splits(programs, key_blocks, 132) == want
