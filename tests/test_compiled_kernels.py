"""
What the kernels compile to on an H100 (sm_90), checked without a GPU through tools/compile_sm90.py: properties
that speed depends on and that a timing test could not pin down.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def counts():
    pytest.importorskip("triton.backends.nvidia.compiler", reason="this triton has no NVIDIA backend to compile with")
    # A subprocess without TRITON_INTERPRET: under the interpreter the kernels are not compilable objects.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "compile_sm90.py")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {}
    for line in run.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ("forward", "backward"):
            rows[(cells[0], cells[1] == "True")] = dict(zip(
                ("convert_layout", "st.shared", "ld.shared", "mul.hi", "wgmma.wait_group", "shared"),
                map(int, cells[2:])))
    assert len(rows) == 4, run.stdout
    return rows


def test_philox_only_with_dropout(counts):
    # mul.hi appears in these kernels only through Philox
    assert counts[("forward", False)]["mul.hi"] == 0
    assert counts[("backward", False)]["mul.hi"] == 0
    assert counts[("forward", True)]["mul.hi"] > 0


def test_backward_draws_each_philox_word_once(counts):
    # The backward regenerates the mask in two passes (dK/dV and dQ), each over the same tiles as the forward, so
    # with every Philox call made once its Philox work is at most twice the forward's. If Triton recomputes the
    # calls in the dK/dV pass's transposed layout (BENCHMARKS.md, note 11), each call runs on 4 threads and the
    # count is ~4.5x the forward's (372 vs 83 mul.hi at head dim 64).
    assert counts[("backward", True)]["mul.hi"] <= 2 * counts[("forward", True)]["mul.hi"]


def test_forward_dropout_needs_no_shuffle(counts):
    # The forward's mask words land in the threads that use them: dropout adds no layout conversion
    assert counts[("forward", True)]["convert_layout"] == counts[("forward", False)]["convert_layout"]
