"""
Compile the attention kernels for an H100 (sm_90) on any machine, GPU or not, and count what the notes in
BENCHMARKS.md talk about: layout conversions in the TTGIR, shared-memory traffic, the Philox multiplies (mul.hi)
and wgmma waits in the PTX. A developer's tool for checking a layout change before spending GPU time on it.

    python tools/compile_sm90.py [--head-dim 64] [--dump DIR]

Uses the shipped tile configurations for bf16 at T=4096 (the forward's and the backward's), with and without dropout,
then the Hopper forward and backward (flash_hopper.py): their warps, wgmma count, the registers and local memory
(spills) that ptxas gave them, whether ptxas serialized their wgmmas (a wait after each one in the SASS), the SASS's
size, the length of one step of its softmax loop and the spilled registers stored or reloaded inside its loops, read
from the cubin with the cuobjdump that Triton bundles, and how many of a step's exponentials run while its last product
does. Needs triton's NVIDIA backend, which bundles ptxas; no GPU and no CUDA driver. counts() returns the numbers; main
prints them.

    python tools/compile_sm90.py --fa4 [--head-dim 128]

adds the same rows for FlashAttention-4's sm90 forward and backward (`pip install flash-attn-4`), compiled for
an H100 through its fake-tensor mode at the sweep's shape for T=4096 (CuTe DSL's own ptxas; docs/design.md,
"FlashAttention-4's lead").

Run it without TRITON_INTERPRET: under the interpreter the kernels are not compilable objects.
"""
import argparse
import glob
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import flash_kernel as fk  # noqa: E402

POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "DO": "*bf16", "DQ": "*bf16", "DK": "*bf16",
            "DV": "*bf16", "LSE": "*fp32", "DELTA": "*fp32", "SEED": "*i64"}
FLOATS = ("qk_scale", "sm_scale", "drop_scale")


def _specialize(kernel, constants, type_of, divisible):
    """(signature, constexprs, attrs) for a launch of `kernel`: the constants as constexprs, every other argument
    typed type_of(name) and, where divisible(name), marked divisible by 16 as Triton marks a launch's 16-byte
    aligned pointers and multiple-of-16 integers. Without the marks the kernels compile to other, slower code:
    the loads are neither vectorized nor pipelined."""
    names = kernel.arg_names
    signature, attrs = {}, {}
    for i, name in enumerate(names):
        if name in constants:
            signature[name] = "constexpr"
        else:
            signature[name] = type_of(name)
            if divisible(name):
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, {(names.index(k),): v for k, v in constants.items()}, attrs


def compile_sm90(kernel, constants, num_warps, num_stages, arch=90, dtype="bf16"):
    # Specialized as a launch at the tools' shapes is: pointers, strides, H and T divisible by 16
    def type_of(name):
        if name in FLOATS:
            return "fp32"
        return POINTERS[name].replace("bf16", dtype) if name in POINTERS else "i32"

    src = ASTSource(kernel, *_specialize(kernel, constants, type_of,
                                         lambda name: name not in FLOATS and name != "DROP_THRESHOLD"))
    target = GPUTarget("cuda", arch, 32)
    return triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))


def compile_config(kind, config, D, dropout=False, arch=90, dtype="bf16"):
    """Compile the forward ("fwd", config as flash_kernel.FWD_CONFIG) or the backward ("bwd", BWD_CONFIG)."""
    common = dict(HEAD_DIM=D, CAUSAL=True, DROPOUT=dropout, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32")
    *blocks, warps, stages = config
    if kind == "fwd":
        kernel, names = fk._attn_fwd_kernel, ("BLOCK_M", "BLOCK_N")
    else:
        kernel, names = fk._attn_bwd_kernel, ("BLOCK", "BLOCK_M1", "BLOCK_N2")
    return compile_sm90(kernel, dict(common, **dict(zip(names, blocks))), warps, stages, arch=arch, dtype=dtype)


def compile_hopper(kind, D, dtype=torch.bfloat16, groups=2):
    """Compile flash_hopper's forward ("fwd", with 2 or 3 softmax groups) or backward ("bwd") for sm_90 as
    flash_kernel launches them for the model's strided q, k, v."""
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    import flash_hopper as fh

    B, H, T = 2, 4, 1024
    q = torch.empty(B, T, 3, H, D, dtype=dtype)[:, :, 0].transpose(1, 2)  # (B, H, T, D) view, as the model's
    if kind == "fwd":
        kernel = fh._attn_fwd_hopper_kernel
        descs = {name: fh._descriptor(q, fh.ROWS.value) for name in ("q_desc", "o_desc")}
        descs.update({name: fh._descriptor(q, fh.BLOCK_N.value) for name in ("k_desc", "v_desc")})
    else:
        kernel = fh._attn_bwd_hopper_kernel
        tile = fh.TILE.value
        descs = {name: fh._descriptor(q, tile, tile) for name in ("q_desc", "k_desc", "v_desc", "do_desc", "dk_desc",
                                                                  "dv_desc")}
        descs["dq_desc"] = fh._dq_accumulator(B, H, T, D, "cpu")[1]
    pointers = {"COUNTER": "*i32", "LSE": "*fp32", "DELTA": "*fp32"}

    def type_of(name):
        if name in descs:
            return mangle_type(descs[name])
        return pointers.get(name, "fp32" if name in ("qk_scale", "sm_scale") else "i32")

    constants = {"HEAD_DIM": D, "STAGES": fh.NUM_STAGES if kind == "fwd" else fh.BWD_STAGES[D]}
    if kind == "fwd":
        constants["GROUPS"] = groups
    warpgroups = groups if kind == "fwd" else fh.BWD_WARPGROUPS[D]
    src = GluonASTSource(kernel, *_specialize(kernel, constants, type_of,
                                              lambda name: name in pointers or name.startswith("stride")))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options=dict(num_warps=4, maxnreg=fh._maxnreg(warpgroups)))


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """cuobjdump's output for a cubin, with the cuobjdump that Triton bundles."""
    from triton.backends.nvidia import compiler as nv

    cuobjdump = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([cuobjdump, flag, f.name], capture_output=True, text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers and stack (local memory, where spills go) per thread, from cuobjdump --dump-resource-usage."""
    out = _cuobjdump(cubin, "--dump-resource-usage")
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out)}


def sass_waits(sass: str) -> tuple:
    """(HGMMA, WARPGROUP.DEPBAR) instruction counts in a kernel's SASS. ptxas may serialize a kernel's wgmmas, a wait
    after each one, when it cannot prove their pipeline safe (an async product issued under a branch did it:
    docs/design.md, "The next item's first product before the epilogue"); the PTX does not show it, the SASS does."""
    return len(re.findall(r"\bHGMMA\.", sass)), len(re.findall(r"\bWARPGROUP\.DEPBAR\b", sass))


def sass_size(sass: str) -> int:
    """Instructions in a kernel's SASS (cuobjdump prints each at its address, /*0a80*/): the code that instruction
    fetch has to keep up with (docs/design.md, "One copy of the first tile's softmax")."""
    return len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/", sass, re.M))


def _softmax_loops(sass: str) -> list:
    """The bodies of a kernel's softmax loops, each a list of its SASS instructions (opcode and operands, no
    predicate): the code from a backward branch's target to the branch, where it holds both an HGMMA and an
    exponential. Only branches ahead of the last EXIT count: after it sit the waits' out-of-line retry paths, which
    branch back into the loops. A loop around another (a persistent program's loop over items) is left out: its body
    holds the other's."""
    code = [(int(a, 16), op, rest) for a, op, rest in
            re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", sass, re.M)]
    end = max((a for a, op, _ in code if op == "EXIT"), default=0)
    spans = []
    for addr, op, rest in code:
        target = re.match(r"\s*(0x[0-9a-f]+)", rest) if op == "BRA" and addr < end else None
        if target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            body = [o + r for a, o, r in code if start <= a <= addr]
            if any(o.startswith("HGMMA") for o in body) and any(o.startswith("MUFU.EX2") for o in body):
                spans.append((start, addr, body))
    return [body for start, stop, body in spans
            if not any((start, stop) != (a, b) and start <= a and b <= stop for a, b, _ in spans)]


def inner_loop(sass: str) -> int:
    """Instructions in one step of a kernel's softmax loop (_softmax_loops). A kernel with a loop per warpgroup or
    per masked and unmasked step gives its shortest."""
    return min((len(body) for body in _softmax_loops(sass)), default=0)


def exps_under_product(sass: str) -> int:
    """Exponentials that one step of a kernel's softmax loop computes while its last product still runs: the
    MUFU.EX2 between the step's wait for all but the latest wgmma group (WARPGROUP.DEPBAR.LE gsb0, 0x1) and its
    wait for all of them (0x0). The fewest over the kernel's loops; 0 in a loop without that pair of waits. ptxas
    moves a wait up to the first barrier or mbarrier arrival above it (docs/design.md, "The P V wait pinned after
    the softmax")."""
    def under(body):
        most, count = 0, None  # count: exponentials since the last 0x1 wait, None outside such a span
        for ins in body:
            if ins.startswith("WARPGROUP.DEPBAR.LE gsb0, 0x1"):
                count = 0
            elif ins.startswith("WARPGROUP.DEPBAR.LE gsb0, 0x0") and count is not None:
                most, count = max(most, count), None
            elif ins.startswith("MUFU.EX2") and count is not None:
                count += 1
        return most

    return min((under(body) for body in _softmax_loops(sass)), default=0)


def loop_spills(sass: str) -> int:
    """Local-memory loads and stores (spilled registers) inside a kernel's softmax loops, which pay them every step;
    the spills ptxas places around the loops (once per item or per program) are left out."""
    return sum(op.startswith(("LDL", "STL")) for body in _softmax_loops(sass) for op in body)


FA4_TARGET = {"FLASH_ATTENTION_ARCH": "sm_90", "CUTE_DSL_ARCH": "sm_90a", "FLASH_ATTENTION_NUM_SMS": "132"}


def compile_fa4(head_dim: int, folder: str) -> dict:
    """FlashAttention-4's causal bf16 forward and backward for an H100, compiled without a GPU through its
    fake-tensor mode at the sweep's shape for T=T_TILES, (B, T, H, D) inputs: {kernel class: cubin}, the forward,
    the backward and its pre- and postprocessing passes. Imports flash_attn.cute (ImportError without it)."""
    os.environ.update(FA4_TARGET, CUTE_DSL_KEEP_CUBIN="1", CUTE_DSL_DUMP_DIR=folder)  # read when FA4 compiles
    from torch._subclasses.fake_tensor import FakeTensorMode
    from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd

    B, H, T, D = 16384 // T_TILES, 2048 // head_dim, T_TILES, head_dim
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v, do = (torch.empty(B, T, H, D, dtype=torch.bfloat16, device="cuda") for _ in range(4))
        out, lse = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)[:2]
        _flash_attn_bwd(q, k, v, out, do, lse, causal=True)
    cubins = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.cubin"))):
        name = re.search(r"(FlashAttention\w+?)_object", os.path.basename(path))
        with open(path, "rb") as f:
            cubins[name.group(1) if name else os.path.basename(path)] = f.read()
    return cubins


def sass_row(cubin: bytes) -> dict:
    """Registers, stack, HGMMA, wgmma waits, SASS instructions and loop step of one compiled kernel."""
    usage, sass = resource_usage(cubin), _cuobjdump(cubin, "--dump-sass")
    hgmma, waits = sass_waits(sass)
    return dict(registers=usage["REG"], stack=usage["STACK"], hgmma=hgmma, waits=waits, sass=sass_size(sass),
                loop=inner_loop(sass), loop_spills=loop_spills(sass), exps_under=exps_under_product(sass))


TRITON_COUNTS = ("convert_layout", "st.shared", "ld.shared", "mul.hi", "wgmma.wait_group", "shared")
HOPPER_COUNTS = ("warps", "wgmma", "setmaxnreg", "registers", "stack", "shared", "hgmma", "waits", "sass", "loop",
                 "loop_spills", "exps_under")
FA4_COUNTS = ("registers", "stack", "hgmma", "waits", "sass", "loop", "loop_spills", "exps_under")
T_TILES = 4096  # the Triton kernels are compiled with the tiles the shipped table gives this length


def counts(head_dim: int = 64, dump: Optional[str] = None) -> dict:
    """What the kernels compile to for an H100 at this head dim: {"triton": rows, "hopper": rows}. A Triton row
    is {"kernel": "forward" | "backward", "dropout": bool} and TRITON_COUNTS: layout conversions in the TTGIR,
    st.shared, ld.shared, mul.hi and wgmma.wait_group in the PTX, shared memory in bytes. A Hopper row is
    {"kernel": "forward" | "backward" | "forward3" (head dim 64's three-group forward)} and HOPPER_COUNTS: warps,
    wgmma.mma_async and setmaxnreg in the PTX, registers and stack bytes per thread, shared bytes, HGMMA, wgmma
    waits and instructions in the SASS, the instructions of one step of its softmax loop (inner_loop) and the
    local-memory loads and stores in its softmax loops (loop_spills) and the exponentials a step computes under its
    last product (exps_under_product). With dump, each kernel's TTGIR and PTX (and the Hopper kernels' SASS) are
    also written to that folder."""
    D = head_dim
    rows = {"triton": [], "hopper": []}
    for dropout in (False, True):
        for name, kind in (("forward", "fwd"), ("backward", "bwd")):
            config = fk._choice(kind, torch.bfloat16, D, T_TILES)[1]
            compiled = compile_config(kind, config, D, dropout)
            ttgir, ptx = compiled.asm["ttgir"], compiled.asm["ptx"]
            values = (ttgir.count("ttg.convert_layout"), ptx.count("st.shared"), ptx.count("ld.shared"),
                      ptx.count("mul.hi."), ptx.count("wgmma.wait_group"), compiled.metadata.shared)
            rows["triton"].append(dict(kernel=name, dropout=dropout, **dict(zip(TRITON_COUNTS, values))))
            if dump:
                _write(dump, {f"{name}_dropout{int(dropout)}.{ext}": text for ext, text in (("ttgir", ttgir),
                                                                                          ("ptx", ptx))})
    hopper = [("fwd", "forward", 2), ("bwd", "backward", 2)]
    if D == 64:  # the long-T forward's three softmax groups (flash_hopper._fwd_groups)
        hopper.append(("fwd", "forward3", 3))
    for kind, name, groups in hopper:
        compiled = compile_hopper(kind, D, groups=groups)
        ptx = compiled.asm["ptx"]
        sass = _cuobjdump(compiled.asm["cubin"], "--dump-sass")
        rows["hopper"].append(dict(kernel=name, warps=compiled.metadata.num_warps, wgmma=ptx.count("wgmma.mma_async"),
                                   setmaxnreg=ptx.count("setmaxnreg"), shared=compiled.metadata.shared,
                                   **sass_row(compiled.asm["cubin"])))
        # the SASS shows what ptxas did with the PTX's order (docs/design.md, "Hopper variants that did not pay")
        if dump:
            _write(dump, {f"hopper_{name}.{ext}": compiled.asm[ext] for ext in ("ttgir", "ptx")}
                   | {f"hopper_{name}.sass": sass})
    return rows


def _write(folder: str, files: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dim", type=int, default=64, choices=(64, 128), help="the Hopper kernels' head dims")
    parser.add_argument("--dump", help="also write each variant's TTGIR and PTX (and the Hopper kernels' SASS) to "
                                       "this folder")
    parser.add_argument("--fa4", action="store_true", help="also FlashAttention-4's sm90 kernels (flash_attn.cute)")
    args = parser.parse_args()
    if args.dump and os.path.exists(args.dump) and not os.path.isdir(args.dump):
        parser.error(f"--dump {args.dump} is a file: give a folder (it is made when absent)")
    fa4 = {}
    if args.fa4:
        with tempfile.TemporaryDirectory() as folder:
            try:
                fa4 = {name: sass_row(cubin) for name, cubin in compile_fa4(args.head_dim, folder).items()}
            except ImportError as e:
                parser.error(f"--fa4 needs FlashAttention-4 (pip install flash-attn-4): {e}")
            except Exception as e:  # its compile path changes between versions: say which step failed, in one line
                parser.error(f"FlashAttention-4 did not compile here ({type(e).__name__}: {str(e)[:200]})")
    rows = counts(args.head_dim, args.dump)
    print(f"sm_90, triton {triton.__version__}, bf16, head dim {args.head_dim}, tiles for T={T_TILES}")
    print("| kernel | dropout | convert_layout | st.shared | ld.shared | mul.hi | wgmma.wait_group | shared bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows["triton"]:
        print(f"| {row['kernel']} | {row['dropout']} | " + " | ".join(str(row[c]) for c in TRITON_COUNTS) + " |")
    print(f"\nHopper kernels (flash_hopper.py), head dim {args.head_dim}:")
    print("| kernel | warps | wgmma.mma_async | setmaxnreg | registers | stack bytes | shared bytes | SASS HGMMA | "
          "SASS wgmma waits | SASS instructions | loop step | spills in the loops | exponentials under a product |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows["hopper"]:
        print(f"| hopper {row['kernel']} | " + " | ".join(str(row[c]) for c in HOPPER_COUNTS) + " |")
    if fa4:
        print(f"\nFlashAttention-4 (flash-attn-4 {importlib.metadata.version('flash-attn-4')}), head dim "
              f"{args.head_dim}, T={T_TILES}:")
        print("| kernel | registers | stack bytes | SASS HGMMA | SASS wgmma waits | SASS instructions | loop step | "
              "spills in the loops | exponentials under a product |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, row in fa4.items():
            print(f"| {name} | " + " | ".join(str(row[c]) for c in FA4_COUNTS) + " |")


if __name__ == "__main__":
    main()
