"""
What the kernels compile to on NVIDIA GPUs, checked without a GPU through tools/compile_sm90.py and
tools/shared_memory.py: properties that speed depends on and that a timing test could not pin down, and the
shared memory that decides whether a kernel launches at all.
"""
import pytest

from helpers import call_without_interpreter


def _needs_nvidia_backend():
    pytest.importorskip("triton.backends.nvidia.compiler", reason="this triton has no NVIDIA backend to compile with")


def _compile_sm90(head_dim):
    _needs_nvidia_backend()
    counts = call_without_interpreter("compile_sm90", "counts", head_dim)
    rows = {(row["kernel"], row["dropout"]): row for row in counts["triton"]}
    hopper = {row["kernel"]: row for row in counts["hopper"]}
    assert len(rows) == 4 and len(hopper) == (3 if head_dim == 64 else 2), counts
    return rows, hopper


@pytest.fixture(scope="module")
def compiled_64():
    return _compile_sm90(64)


@pytest.fixture(scope="module")
def counts(compiled_64):
    return compiled_64[0]


def test_philox_only_with_dropout(counts):
    # mul.hi appears in these kernels only through Philox
    assert counts[("forward", False)]["mul.hi"] == 0
    assert counts[("backward", False)]["mul.hi"] == 0
    assert counts[("forward", True)]["mul.hi"] > 0


def test_backward_draws_each_philox_word_once(counts):
    # The backward regenerates the mask in two passes (dK/dV and dQ), each over the same tiles as the forward, so with
    # every Philox call made once its Philox work is at most twice the forward's. If Triton recomputes the calls in the
    # dK/dV pass's transposed layout (docs/design.md, "Dropout: the transposed dK/dV pass"), each call runs on 4 threads
    # and the count is ~4.5x the forward's (372 vs 83 mul.hi at head dim 64).
    assert counts[("backward", True)]["mul.hi"] <= 2 * counts[("forward", True)]["mul.hi"]


def test_forward_dropout_needs_no_shuffle(counts):
    # The forward's mask words land in the threads that use them: dropout adds no layout conversion
    assert counts[("forward", True)]["convert_layout"] == counts[("forward", False)]["convert_layout"]


@pytest.fixture(scope="module")
def shared_rows():
    # Head dim 128 at T=16384 takes the largest tiles of each dtype. sm_90 is the H100, sm_86 an RTX 30xx (the
    # RTX 40xx, sm_89, has the same 99 KB). ~2 minutes of compiling on a CI machine's CPU.
    _needs_nvidia_backend()
    rows = call_without_interpreter("shared_memory", "fitted_tiles", [90, 86], ["bf16", "fp32"], [128], [16384])
    assert len(rows) == 8, rows
    return rows


def test_h100_runs_the_tuned_tiles(shared_rows):
    # The tiles BENCHMARKS.md measured are the ones an H100 launches: no step-down on sm_90
    for row in shared_rows:
        if row["arch"] == "sm_90":
            assert row["runs"] == row["tuned"], row
            assert row["shared"] <= row["limit"], row


def test_smaller_gpus_get_tiles_that_fit(shared_rows):
    # On a 99 KB GPU the H100's fp32 backward tiles (104 KB) do not fit; _launch_fitting must step down to tiles
    # that do.
    for row in shared_rows:
        if row["arch"] == "sm_86":
            assert row["shared"] <= row["limit"], row


@pytest.fixture(scope="module", params=[64, 128], ids=["D64", "D128"])
def hopper(request, compiled_64):
    return compiled_64[1] if request.param == 64 else _compile_sm90(128)[1]


def test_hopper_kernels_are_warp_specialized(request, hopper):
    # flash_hopper.py's partitions: two 4-warp groups that do the math and a 1-warp loader (warps are allotted in
    # groups of 4, so 12), plus at head dim 64 the backward's 4-warp dQ group and the long forward's third softmax
    # group (16), with registers moved between them by setmaxnreg
    d64 = request.node.callspec.id == "D64"
    assert hopper["forward"]["warps"] == 12 and hopper["backward"]["warps"] == (16 if d64 else 12), hopper
    assert not d64 or hopper["forward3"]["warps"] == 16, hopper
    for kernel in hopper.values():
        assert kernel["setmaxnreg"] > 0, hopper
        assert kernel["shared"] <= 227 * 1024, hopper  # an H100's limit per block


def test_hopper_kernels_do_not_spill(request, hopper):
    # Each softmax group holds S, P and O for 64 rows in registers. If ptxas spills them to local memory, the
    # loop reloads them every key tile (docs/design.md, "Hopper forward: ping-pong warpgroups": an early version
    # spilled 200 bytes per thread).
    # The backward at head dim 64 gives its MMA groups 200 registers (they hold K and V) and the dQ group 88 (K^T):
    # all at 168 spilled 80 bytes (docs/design.md, "Hopper backward, head dim 64: a dQ warpgroup"); now triton
    # 3.6's ptxas spills 8 bytes of the dK/dV epilogue's TMA coordinates, once per program (docs/design.md, "Hopper
    # backward, head dim 64: K and V in registers"; "dQ^T with K^T in registers"). At head dim 128 the backward
    # spills 16 bytes with triton 3.6's ptxas and none with 3.8's, none of them reloaded in the loop; before LSE and
    # delta were loaded late it spilled 64-96 and reloaded them every step (docs/design.md, "Compiled side by side").
    # Three forward groups at 160 registers (head dim 64) spill 16 bytes of an item's setup, stored and reloaded
    # once per item, outside the loop
    assert hopper["forward"]["stack"] == 0, hopper
    assert hopper.get("forward3", {"stack": 0})["stack"] <= 16, hopper
    assert hopper["backward"]["stack"] <= (8 if request.node.callspec.id == "D64" else 16), hopper
    # and whatever ptxas spills, none of it is stored or reloaded inside a softmax loop, where every step would pay
    for kernel in hopper.values():
        assert kernel["loop_spills"] == 0, hopper


def test_hopper_wgmmas_are_not_serialized(hopper):
    # The groups keep products in flight while they compute (warpgroup_mma(..., is_async=True), then a wait for all but
    # the latest). When ptxas cannot prove that pipeline safe it serializes every wgmma of the kernel, a wait after each
    # HGMMA, and the kernel runs about a third slower (docs/design.md, "The next item's first product before the
    # epilogue": 80 waits for 80 HGMMA). The shipped kernels wait once per group of products: 5-12 waits for 40-96 HGMMA
    # (triton 3.6 and 3.8).
    for kernel in hopper.values():
        assert kernel["waits"] < kernel["hgmma"] / 2, hopper


def _sass(*lines):
    # cuobjdump's layout: each instruction at its address, 16 bytes apart
    return "\n".join(f"        /*{16 * i:04x}*/                   {line} ;" for i, line in enumerate(lines))


# An outer loop (0x00-0xc0) around a softmax loop (0x10-0xa0, 10 instructions), then EXIT and a wait's retry path
# that branches back into the loop (0x90-0xf0 would be 7 instructions holding an HGMMA and an exponential)
SASS = _sass("MOV R1, c[0x0][0x28]", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2", "@!P0 BRA 0xe0",
             "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT", *["FADD R4, R4, R3"] * 5, "MUFU.EX2 R3, R3",
             "@P1 BRA 0x10", "HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT", "@P2 BRA 0x0", "EXIT",
             "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2", "BRA 0x90")


def test_inner_loop_is_the_softmax_loops_step():
    # tools/compile_sm90.py's "loop step": the softmax loop's 10 instructions, not the outer loop, nor the wait's
    # retry path after EXIT (7, were it counted); a loop without an exponential is no softmax loop
    _needs_nvidia_backend()
    assert call_without_interpreter("compile_sm90", "inner_loop", SASS) == 10
    assert call_without_interpreter("compile_sm90", "inner_loop", SASS.replace("MUFU.EX2", "FMUL")) == 0


def test_loop_spills_counts_only_the_softmax_loops():
    # tools/compile_sm90.py's "spills in the loops": a reload inside the softmax loop counts, a store in the loop
    # around it (once per item) does not
    _needs_nvidia_backend()
    spilled = SASS.replace("MOV R1, c[0x0][0x28]", "STL [R1], R0").replace("FADD R4, R4, R3", "LDL R4, [R1]", 1)
    assert call_without_interpreter("compile_sm90", "loop_spills", spilled) == 1
    assert call_without_interpreter("compile_sm90", "inner_loop", spilled) == 10
    assert call_without_interpreter("compile_sm90", "loop_spills", SASS) == 0


def test_exps_under_product_counts_between_the_waits():
    # tools/compile_sm90.py's "exponentials under a product": those after a step's wait for all but its latest
    # products and before its wait for all of them; none when ptxas has moved the second wait up above them
    _needs_nvidia_backend()

    def step(*middle):
        return _sass("HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], RZ, !UPT", "WARPGROUP.DEPBAR.LE gsb0, 0x1", *middle,
                     "MUFU.EX2 R5, R5", "@P1 BRA 0x0", "EXIT")

    exps, wait = ("MUFU.EX2 R3, R3", "MUFU.EX2 R4, R4"), "WARPGROUP.DEPBAR.LE gsb0, 0x0"
    assert call_without_interpreter("compile_sm90", "exps_under_product", step(*exps, wait)) == 2
    assert call_without_interpreter("compile_sm90", "exps_under_product", step(wait, *exps)) == 0


def test_hopper_kernels_have_a_softmax_loop(hopper):
    # every Hopper kernel's softmax groups run one loop over key tiles (forward) or query blocks (backward); its step
    # is what docs/design.md, "FlashAttention-4's lead", compares with FlashAttention-4's
    for kernel in hopper.values():
        assert 200 < kernel["loop"] < kernel["sass"], hopper
