"""
bench.py without a GPU: its provider list with and without FlashAttention-4 (flash_attn.cute), the FA4 wrapper's
layout and its correctness check, and its tables.
"""
import math
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import bench
import flash_kernel
from helpers import ROOT


def test_fa4_provider_without_fa4(monkeypatch):
    # A None in sys.modules makes `import flash_attn.cute` raise ImportError, installed or not
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", None)
    fa4, note = bench.fa4_provider()
    assert fa4 is None and note.startswith("FA4: skipped") and "pip install flash-attn-4" in note


def _fake_flash_attn_cute(calls):
    # FlashAttention's interface on (B, T, H, D) tensors, computed by SDPA; returns (out, lse) as FA4 does
    def flash_attn_func(q, k, v, causal=False):
        calls.append((q.shape, q.stride(), causal))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal)
        return out.transpose(1, 2), None

    package, cute = types.ModuleType("flash_attn"), types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = flash_attn_func
    package.cute = cute
    return package, cute


def test_fa4_provider_takes_the_model_layout(monkeypatch):
    # With flash_attn.cute importable, FA4 gets (B, T, H, D) tensors without a copy (the model's views transposed
    # back), causal, and passes bench's own correctness check
    calls = []
    package, cute = _fake_flash_attn_cute(calls)
    monkeypatch.setitem(sys.modules, "flash_attn", package)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    fa4, note = bench.fa4_provider()
    assert note.startswith("FA4: flash_attn.cute.flash_attn_func")
    B, H, T, D = 2, 3, 17, 16
    q, k, v, do = bench.inputs(B, H, T, D, layout="bthd", device="cpu")
    assert q.shape == (B, H, T, D) and q.transpose(1, 2).is_contiguous()
    err = bench.check(fa4, q.float(), k.float(), v.float(), do.float())
    # fp32 SDPA against the fp32 reference: summation order only (measured ~1e-7)
    assert err < 1e-5
    assert calls[0] == ((B, T, H, D), q.transpose(1, 2).stride(), True)


@pytest.mark.parametrize('fa4_imports', [True, False], ids=['with-fa4', 'without-fa4'])
def test_fa4_is_imported_and_timed_after_every_other_provider(fa4_imports, monkeypatch):
    """With flash_attn.cute imported, the other providers' eager calls cost the host more: none of them may be
    timed after the import. FA4's column still comes second, after ours."""
    def fa4(q, k, v):
        raise AssertionError("measure is faked: nothing runs")

    name_of = {fn: name for name, fn in bench.PROVIDERS.items()} | {fa4: "FA4"}
    events = []  # "import", then (provider, T) for each measure call, in order

    def fake_fa4_provider():
        events.append("import")
        return (fa4, "FA4: fake") if fa4_imports else (None, "FA4: skipped, fake")

    def fake_measure(fn, B, H, T, D, graph=False, layout="bthd"):
        events.append((name_of[fn], T))
        return bench.Result(fwd_ms=T / 1000, fwdbwd_ms=T / 500)

    monkeypatch.setattr(bench, "fa4_provider", fake_fa4_provider)
    monkeypatch.setattr(bench, "measure", fake_measure)
    todo = bench.shapes(quick=True)
    rows, notes = bench.measure_everything(todo, "bthd")

    imported = events.index("import")
    assert sorted(events[:imported]) == sorted((p, T) for _, _, _, T, _, _ in todo for p in bench.PROVIDERS)
    assert events[imported + 1:] == ([("FA4", T) for _, _, _, T, _, _ in todo] if fa4_imports else [])
    assert [label for label, *_ in rows] == [label for label, *_ in todo]
    columns = ["ours", "FA4", *list(bench.PROVIDERS)[1:]] if fa4_imports else list(bench.PROVIDERS)
    assert all(list(results) == columns for *_, results in rows)
    assert all(r.fwd_ms == T / 1000 for _, _, _, T, _, results in rows for r in results.values())
    assert notes == (["FA4: fake"] if fa4_imports else ["FA4: skipped, fake"])


def test_inputs_layouts():
    q, k, v, do = bench.inputs(1, 2, 5, 8, layout="bhtd", device="cpu")
    assert q.is_contiguous() and q.requires_grad and not do.requires_grad
    q, k, v, do = bench.inputs(1, 2, 5, 8, layout="bthd", device="cpu")
    assert not q.is_contiguous() and q.transpose(1, 2).is_contiguous() and do.transpose(1, 2).is_contiguous()


def test_tables_follow_the_providers_that_ran():
    ok = bench.Result(fwd_ms=1.0, fwdbwd_ms=2.0, peak_mib=3.0)
    rows = [("D=64 T=1024 (B=16 H=32)", 16, 32, 1024, 64,
             {"ours": ok, "FA4": bench.Result(fwd_ms=0.5, fwdbwd_ms=4.0), "cuDNN": bench.Result(status="OOM")})]
    lines = bench.table("Forward", rows, "fwd").splitlines()
    assert lines[2] == "| shape | ours ms | ours TFLOP/s | FA4 TFLOP/s | cuDNN TFLOP/s | ours/FA4 | ours/cuDNN |"
    ours_tflops = 2 * 16 * 32 * 1024 * 1024 * 64 / 1e-3 / 1e12
    assert lines[4] == (f"| D=64 T=1024 (B=16 H=32) | 1.000 | {ours_tflops:.0f} | {2 * ours_tflops:.0f} | OOM | "
                        "0.50x | – |")
    assert math.isclose(bench.tflops(2.0, 16, 32, 1024, 64, 3.5), 3.5 * ours_tflops / 2)
    assert "| shape | ours | FA4 | cuDNN |" in bench.memory_table(rows)


def test_shapes_keep_the_sweep_protocol():
    # B*T = 16384 tokens and hidden 2048 at every sweep point; the model shapes first, replayed from a CUDA graph
    found = bench.shapes()
    assert [graph for *_, graph in found[:2]] == [True, True]
    for label, B, H, T, D, graph in found[2:]:
        assert B * T == 16384 and H * D == 2048 and not graph
    assert {T for _, _, _, T, _, _ in bench.shapes(quick=True)[2:]} == {1024, 4096}



@pytest.mark.skipif(torch.cuda.is_available(), reason="the message a machine without a GPU gets")
@pytest.mark.parametrize('command', [['bench.py'], ['bench_generate.py', '--out=x.md'], ['tools/decode_tiles.py'],
                                     ['tools/ab_kernel.py', 'HEAD'], ['tools/ncu_attention.py'],
                                     ['tools/dq_cast.py'], ['tools/sustained.py'], ['tools/fwd_sections.py']],
                         ids=lambda c: c[0])
def test_gpu_benchmarks_without_a_gpu_say_so_in_one_line(command, tmp_path):
    """Regression: the tools ended in torch's "no NVIDIA driver" traceback."""
    proc = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={'CUDA_VISIBLE_DEVICES': '', 'PATH': '/usr/bin:/bin'})
    message = proc.stderr.strip()
    assert proc.returncode == 1 and '\n' not in message, message
    assert message.startswith(f"error: {command[0]} times GPU kernels and needs a CUDA GPU"), message


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message a machine without a GPU gets")
def test_the_ddp_check_without_gpus_names_its_cpu_mode(tmp_path):
    """Regression: it ran the first training run, then printed that run's last five log lines, and left its
    out_root behind."""
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'ddp_check.py')], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={'CUDA_VISIBLE_DEVICES': '', 'PATH': '/usr/bin:/bin'})
    message = proc.stderr.strip()
    assert proc.returncode == 1 and '\n' not in message, message
    assert message.startswith("error: ddp_check.py runs 2 processes on a GPU each, and torch sees 0 GPU(s) here")
    assert '--extra="--backend=gloo --device=cpu"' in message and not list(tmp_path.iterdir())


@pytest.mark.parametrize('command', [['bench.py', '--foo'], ['bench_generate.py', '--out']], ids=lambda c: c[0])
def test_a_bad_option_is_one_line(command, tmp_path):
    """Regression: argparse's usage, then its error, exit status 2; every other script says one `error:` line."""
    proc = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    message = proc.stderr.strip()
    assert proc.returncode == 1 and '\n' not in message, message
    assert message.startswith("error: ") and message.endswith("(--help lists the options)"), message


@pytest.mark.parametrize('n', [1, 16384, 40000, 2 * 16384], ids=str)
def test_read_only_kernel_reads_every_element_once(n):
    # bench_generate's read-only floor must read all of the cache and nothing past it: its partial sums add up to
    # the tensor's sum. Lengths around its 16384-element loads check the whole blocks and the tail.
    import bench_generate
    if not torch.cuda.is_available() and (problem := flash_kernel.interpreter_problem()):
        pytest.skip(problem)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    x = torch.randn(n, dtype=torch.float16, device=device, generator=torch.Generator(device).manual_seed(0))
    got = bench_generate.read_only(x).sum().item()
    want = x.double().sum().item()
    # fp32 additions in another order: each partial sum of up to n terms is off by at most n * 2^-24 * sum |x|
    assert abs(got - want) <= n * 2.0**-24 * x.double().abs().sum().item()


def test_ncu_table_reads_nsight_computes_raw_csv(tmp_path):
    """tools/ncu_table.py: the units row sets the duration's scale, the stall reasons sum to the cycles per issued
    instruction, "selected" is no stall column, the columns are the reasons with the most stalled cycles (a short
    fill's huge ratio does not take one), a metric the report lacks is "-", long generated names shorten."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_table
    stall = 'smsp__average_warps_issue_stalled_{}_per_issue_active.ratio'
    names = ['ID', 'Kernel Name', 'gpu__time_duration.sum', stall.format('barrier'), stall.format('long_scoreboard'),
             stall.format('drain'), stall.format('selected'),
             'sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active', 'smsp__inst_executed.sum',
             'launch__registers_per_thread']
    units = ['', '', 'usecond', '', '', '', '', '%', 'inst', 'register/thread']
    cute = 'kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at_0x7f_tensorptr'
    rows = [['0', '_attn_fwd_hopper_kernel(TensorDescriptor, int)', '668.4', '2.30', '0.88', '0.00', '1.00', '46.1',
             '249,000,000', '168'],
            ['1', cute, '1,024.0', '1.28', '1.51', '0.00', '0.50', '45.8', '618000000', '128'],
            ['2', 'void at::native::FillFunctor<float>', '12.0', '0.00', '0.00', '40.60', '0.10', '0.0', '3,000,000',
             '16']]
    path = tmp_path / 'attn.csv'
    path.write_text('\n'.join(','.join(f'"{c}"' for c in line) for line in [names, units] + rows) + '\n')
    lines = ncu_table.table(*ncu_table.read(str(path)), reasons=2).splitlines()
    head = [c.strip() for c in lines[0].strip('|').split('|')]
    # barrier: 2.30 x 249M + 1.28 x 618M cycles, long_scoreboard 0.88 x 249M + 1.51 x 618M, drain 40.6 x 3M
    assert head[4:6] == ['stalled: barrier', 'stalled: long_scoreboard'] and 'stalled: drain' not in head
    assert 'stalled: selected' not in head
    first, second = ([c.strip() for c in line.strip('|').split('|')] for line in lines[2:4])
    assert first[:4] == ['0', '_attn_fwd_hopper_kernel', '0.668', '4.18']  # 668.4 us; 2.30 + 0.88 + 1.00
    assert second[:4] == ['1', 'FlashAttentionForwardSm90', '1.024', '3.29']
    assert first[head.index('MUFU (XU) %')] == '-' and first[head.index('tensor pipe %')] == '46.1'
    assert first[head.index('instructions (M)')] == '249' and second[head.index('registers')] == '128'


@pytest.mark.parametrize("unit,value", [("msecond", "0.668"), ("ms", "0.668"), ("us", "668.4"), ("nsecond", "668,400")])
def test_ncu_table_reads_the_durations_unit_long_or_short(tmp_path, unit, value):
    """Nsight Compute names the duration's unit "msecond" in some versions and "ms" in others; both scale it."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_table
    names = ['ID', 'Kernel Name', 'gpu__time_duration.sum']
    path = tmp_path / 'attn.csv'
    lines = [names, ['', '', unit], ['0', 'k', value]]
    path.write_text('\n'.join(','.join(f'"{c}"' for c in line) for line in lines) + '\n')
    row = ncu_table.table(*ncu_table.read(str(path))).splitlines()[2]
    assert [c.strip() for c in row.strip('|').split('|')][2] == '0.668'


@pytest.mark.parametrize("unit,value", [("cycle/second", "1,787,918,389.93"), ("cycle/usecond", "1,787.92"),
                                        ("cycle/nsecond", "1.79"), ("Ghz", "1.79")])
def test_ncu_table_gives_cycles_and_the_clock(tmp_path, unit, value):
    """The kernel's cycles in millions and its mean SM clock in GHz, whichever unit the clock comes in; a clock in a
    unit the table does not know is "-", not a wrong number."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_table
    names = ['ID', 'Kernel Name', 'sm__cycles_elapsed.max', 'sm__cycles_elapsed.avg.per_second']
    path = tmp_path / 'attn.csv'
    for clock_unit, want in ((unit, '1.79'), ('cycle/fortnight', '-')):
        lines = [names, ['', '', 'cycle', clock_unit], ['0', 'k', '3,695,293', value]]
        path.write_text('\n'.join(','.join(f'"{c}"' for c in line) for line in lines) + '\n')
        table = ncu_table.table(*ncu_table.read(str(path))).splitlines()
        head, row = ([c.strip() for c in line.strip('|').split('|')] for line in (table[0], table[2]))
        assert row[head.index('cycles (M)')] == '3.695' and row[head.index('SM GHz')] == want


def test_ncu_table_ranks_stalls_without_instruction_counts(tmp_path):
    """A report without InstructionStats still gets its stall columns: the reasons with the largest summed ratios."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_table
    stall = 'smsp__average_warps_issue_stalled_{}_per_issue_active.ratio'
    names = ['ID', 'Kernel Name', stall.format('barrier'), stall.format('wait'), stall.format('drain')]
    rows = [['0', 'a', '2.00', '0.50', '0.10'], ['1', 'b', '1.00', '3.00', '0.20']]
    path = tmp_path / 'attn.csv'
    path.write_text('\n'.join(','.join(f'"{c}"' for c in line) for line in [names] + rows) + '\n')
    head = ncu_table.table(*ncu_table.read(str(path)), reasons=2).splitlines()[0]
    assert [c.strip() for c in head.strip('|').split('|')][4:6] == ['stalled: wait', 'stalled: barrier']


def test_ncu_table_refuses_another_csv(tmp_path):
    path = tmp_path / 'other.csv'
    path.write_text('a,b\n1,2\n')
    proc = subprocess.run([sys.executable, str(ROOT / 'tools' / 'ncu_table.py'), str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.strip().startswith('error: ') and '\n' not in proc.stderr.strip()


@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
def test_ab_kernel_times_either_layout(layout):
    """tools/ab_kernel.py --layout: dense (B, H, T, D) inputs or the model's (B, T, H, D) views, as bench.py makes them,
    without autograd's graph (the launchers are timed, not autograd)."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ab_kernel
    B, H, T, D = 2, 3, 5, 16
    for t in ab_kernel.inputs(B, H, T, D, layout, device="cpu"):
        assert t.shape == (B, H, T, D) and not t.requires_grad
        assert t.stride() == ((T * H * D, D, H * D, 1) if layout == "bthd" else (H * T * D, T * D, D, 1))


def test_ab_kernel_loads_each_variant_as_a_module_of_its_own(tmp_path):
    """tools/ab_kernel.py --variant: a folder with only a flash_hopper.py runs it under this tree's flash_kernel.py,
    in modules and torch-op namespaces of its own beside the baseline's, so one process can time them all."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ab_kernel
    folder = tmp_path / 'late'
    folder.mkdir()
    (folder / 'flash_hopper.py').write_text((ROOT / 'flash_hopper.py').read_text() + '\nVARIANT = "late"\n')
    old = ab_kernel.load_old(str(ROOT), 'base')
    late = ab_kernel.load_old(str(folder), 'late', tree_kernel=True)
    assert (old.__name__, late.__name__) == ('flash_kernel_ab_base', 'flash_kernel_ab_late')
    if late.flash_hopper is not None:  # a Triton without Gluon has no Hopper kernels to swap
        assert late.flash_hopper.VARIANT == 'late' and not hasattr(old.flash_hopper, 'VARIANT')
    assert hasattr(torch.ops.flashgpt_ab_late, 'attn_fwd') and hasattr(torch.ops.flashgpt_ab_base, 'attn_fwd')
    with pytest.raises(SystemExit, match='no flash_kernel.py'):
        ab_kernel.load_old(str(folder), 'strict')  # without tree_kernel a folder must hold its own flash_kernel.py
    with pytest.raises(SystemExit, match='--variant'):
        ab_kernel._variant_names([str(folder), str(folder)])  # two variants of one name
    with pytest.raises(SystemExit, match='--variant'):
        ab_kernel._variant_names([str(tmp_path)])  # no kernel file in it
    # a variant is timed only while its outputs match the baseline's within bench.py's CHECK_TOL
    x = torch.randn(64)
    assert ab_kernel.mismatch([x * 1.001, x], [x, x]) == pytest.approx(1e-3, rel=1e-3)
    assert not ab_kernel.mismatch([x.clone().fill_(float('nan'))], [x]) < ab_kernel.CHECK_TOL
    assert ab_kernel.mismatch([torch.zeros(4)], [torch.zeros(4)]) == 0  # dq at T=1: no division by zero


def write_ncu_csv(path, rows):
    """Nsight Compute's raw CSV (`ncu -i REPORT --page raw --csv`) of kernels given as [name, cycles] rows."""
    lines = [['ID', 'Kernel Name', 'sm__cycles_elapsed.max'], ['', '', 'cycle']]
    lines += [[str(n)] + row for n, row in enumerate(rows)]
    path.write_text('\n'.join(','.join(f'"{c}"' for c in line) for line in lines) + '\n')
    return path


def test_ab_kernel_reads_cycles_back_in_launch_order(tmp_path):
    """tools/ab_kernel.py --cycles: the main forward and backward kernels of a --profile run, in its launch order
    (per shape: per round, old then each variant, forward then backward), the least cycles over the rounds; the fills
    and passes around them are skipped; a profile of another launch order is refused in one line."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ab_kernel
    shapes = [(4, 32, 4096, 64), (4, 16, 4096, 128)]
    names = ['old', 'v']
    cycles = {  # (shape index, name, pass): cycles in the two rounds
        (0, 'old', 'fwd'): (1.20e6, 1.10e6), (0, 'old', 'bwd'): (2.50e6, 2.60e6),
        (0, 'v', 'fwd'): (1.10e6, 1.15e6), (0, 'v', 'bwd'): (2.45e6, 2.40e6),
        (1, 'old', 'fwd'): (0.76e6, 0.77e6), (1, 'old', 'bwd'): (2.16e6, 2.17e6),
        (1, 'v', 'fwd'): (0.76e6, 0.76e6), (1, 'v', 'bwd'): (2.20e6, 2.18e6)}
    kernel = {(0, 'fwd'): '_attn_fwd_hopper_kernel', (0, 'bwd'): '_attn_bwd_hopper_kernel',
              (1, 'fwd'): '_attn_fwd_kernel', (1, 'bwd'): '_attn_bwd_kernel'}
    rows = []
    for i in range(len(shapes)):
        for r in range(2):
            for name in names:
                rows.append(['void at::FillFunctor<int>', '5,000'])
                rows.append([kernel[(i, 'fwd')], f"{cycles[(i, name, 'fwd')][r]:,.0f}"])
                rows.append(['_attn_bwd_delta_kernel', '90,000'])
                rows.append([kernel[(i, 'bwd')] + '(TensorDescriptor, int)', f"{cycles[(i, name, 'bwd')][r]:,.0f}"])
    path = write_ncu_csv(tmp_path / 'ab.csv', rows)
    got = ab_kernel.cycles_rows(str(path), names, shapes, rounds=2)
    assert list(got) == ['v']
    first, second = got['v']
    assert (first['T'], first['D'], second['D']) == (4096, 64, 128)
    assert (first['fwd_old'], first['fwd_new'], first['bwd_old'], first['bwd_new']) == (1.10, 1.10, 2.50, 2.40)
    assert (second['fwd_old'], second['fwd_new'], second['bwd_old'], second['bwd_new']) == (0.76, 0.76, 2.16, 2.18)
    with pytest.raises(SystemExit, match='--rounds'):
        ab_kernel.cycles_rows(str(path), names, shapes, rounds=1)  # half the launches a one-round profile makes


def test_ncu_sass_reads_the_source_page_per_kernel(tmp_path):
    """tools/ncu_sass.py: kernels split at their "Kernel Name" lines, samples shared out by reason and instruction
    (most first, a branch's target address dropped), and the bank-conflicted instructions' excess over all the
    kernel's shared-memory wavefronts."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_sass
    head = ['Address', 'Source', 'Warp Stall Sampling (All Samples)', 'L1 Wavefronts Shared Excessive',
            'L1 Wavefronts Shared', 'stall_barrier', 'stall_long_sb', 'stall_barrier (Not Issued)']
    first = [['0x10', '  NOP', '60', '0', '0', '60', '0', '60'],
             ['0x20', '@!P0  BRA 0x7f00', '30', '0', '0', '0', '30', '0'],
             ['0x30', '  STS.64 [R2+UR4], R8', '10', '1,000', '2,000', '4', '6', '4'],
             ['0x40', '  LDS.64 R4, [R2]', '0', '0', '2,000', '0', '0', '0']]
    second = [['0x10', '  EXIT', '5', '-', '-', '0', '5', '0']]
    lines = [['Kernel Name', 'a'], head, *first, ['Kernel Name', 'b'], head, *second]
    path = tmp_path / 'src.csv'
    path.write_text('\n'.join(','.join(f'"{c}"' for c in line) for line in lines) + '\n')
    kernels = ncu_sass.read(str(path))
    assert [(name, len(rows)) for name, rows in kernels] == [('a', 4), ('b', 1)]
    text = ncu_sass.summary(*kernels[0], top=2).splitlines()
    assert text[2] == '100 stall samples; by reason: barrier 64.0%, long_sb 36.0%'
    assert text[6:] == ['| 60.0% | `NOP` | barrier 100%, long_sb 0% |',
                        '| 30.0% | `@!P0 BRA` | long_sb 100%, barrier 0% |', '',
                        'Shared-memory instructions with more wavefronts than their ideal: 1 STS.64; their excess '
                        "is 25.0% of the kernel's shared-memory wavefronts."]
    assert 'wavefronts than' not in ncu_sass.summary(*kernels[1])


def test_ncu_sass_sums_samples_by_opcode():
    """tools/ncu_sass.py --by-opcode: an instruction's samples count under its base opcode, whatever its predicate
    and modifiers, opcodes most first, each with its two main reasons as shares of its own samples."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_sass
    rows = [{'Source': source, 'Warp Stall Sampling (All Samples)': total, 'stall_wait': wait, 'stall_mio': mio,
             'stall_mio (Not Issued)': '0'}
            for source, total, wait, mio in [('  MUFU.EX2 R4, R5', '30', '20', '10'),
                                             ('@!P1  MUFU.EX2 R6, R7', '10', '0', '10'),
                                             ('  FMNMX R1, R2, R3, !PT', '60', '60', '0')]]
    assert ncu_sass.opcode('@!P0 MUFU.EX2 R4, R5') == 'MUFU'
    assert ncu_sass.by_opcode(rows).splitlines() == ['| opcode | share | main reasons |', '|---|---|---|',
                                                     '| `FMNMX` | 60.0% | wait 100%, mio 0% |',
                                                     '| `MUFU` | 40.0% | wait 50%, mio 50% |']


def test_ncu_sass_refuses_another_csv(tmp_path):
    sys.path.insert(0, str(ROOT / 'tools'))
    import ncu_sass
    path = tmp_path / 'raw.csv'
    path.write_text('"ID","Kernel Name"\n"0","k"\n')
    with pytest.raises(SystemExit, match='not Nsight Compute.s source page'):
        ncu_sass.read(str(path))


def test_ab_kernel_times_the_calls_in_turns(monkeypatch):
    """tools/ab_kernel.py's interleaved_ms: each repetition runs every call once, the first one moving along the list
    from one repetition to the next, and each call's events bracket that call alone (not the L2 flush before it).
    A fake clock stands in for the GPU's: each call advances it by its own cost, so every time is known exactly."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ab_kernel
    clock, order = [0.0], []

    class Event:
        def __init__(self, enable_timing):
            assert enable_timing

        def record(self):
            self.at = clock[0]

        def elapsed_time(self, end):
            return end.at - self.at

    def call(name, cost):
        def run():
            order.append(name)
            clock[0] += cost
        return run

    monkeypatch.setattr(torch.cuda, 'Event', Event)
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda: None)
    monkeypatch.setattr(ab_kernel, 'FLUSH_BYTES', 1024)
    ms = ab_kernel.interleaved_ms({'a': call('a', 2.0), 'b': call('b', 1.0), 'c': call('c', 3.0)}, rep_ms=100,
                                  device='cpu')
    reps = round(100 / 2.0)  # rep_ms over the calls' mean cost
    assert ms == {'a': [2.0] * reps, 'b': [1.0] * reps, 'c': [3.0] * reps}
    timed = order[5 * 3:]  # after the five repetitions of the estimate
    assert [timed[3 * i:3 * i + 3] for i in range(3)] == [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b']]
    assert len(timed) == 3 * reps


def test_ab_kernel_control_is_a_second_copy_of_the_baseline(tmp_path, monkeypatch, capsys):
    """tools/ab_kernel.py --control: a copy of OLD compared with OLD like a variant, last, after this tree (or the
    --variant folders), so the A/B shows its own floor; a --variant folder named control is refused in one line."""
    sys.path.insert(0, str(ROOT / 'tools'))
    import ab_kernel
    folder = tmp_path / 'late'
    folder.mkdir()
    (folder / 'flash_hopper.py').write_text('')
    assert ab_kernel._variant_names([str(folder)], control='HEAD') == {'late': str(folder), 'control': 'HEAD'}
    (tmp_path / 'control').mkdir()
    (tmp_path / 'control' / 'flash_hopper.py').write_text('')
    with pytest.raises(SystemExit, match='--control'):
        ab_kernel._variant_names([str(tmp_path / 'control')], control='HEAD')
    # without --variant: OLD, this tree, then the copy of OLD, as --profile launches them; control 2% off
    launched = {'old': 1.00e6, 'new': 0.90e6, 'control': 1.02e6}
    rows = [[f'_attn_{kind}_hopper_kernel', f'{launched[name] * (2 if kind == "bwd" else 1):,.0f}']
            for _ in ab_kernel.SHAPES for name in launched for kind in ('fwd', 'bwd')]
    path = write_ncu_csv(tmp_path / 'ab.csv', rows)
    monkeypatch.setattr(sys, 'argv', ['ab_kernel.py', 'HEAD', '--control', '--cycles', str(path)])
    ab_kernel.main()
    out = capsys.readouterr().out
    assert '### new: clock cycles, HEAD -> this tree' in out and '### control: clock cycles, HEAD -> HEAD again' in out
    new, control = out.split('### control')
    assert new.count('| 1.11x |') == 2 * len(ab_kernel.SHAPES)  # old 1.00 / new 0.90 million cycles, each pass
    assert control.count('| 0.98x |') == 2 * len(ab_kernel.SHAPES)
