"""
The decode kernel's tiles and split counts against cuDNN's decode, in one run on this GPU: the check that
flash_decode's defaults (_config, _default_num_splits) are still the fastest of their neighbours.

    python tools/decode_tiles.py

One query per (batch, head), H=12, D=64, bf16, full caches of 1k to 32k tokens; GPU time per call from CUDA-graph
replay over L2-flushing copies of the cache, as bench_generate.py times its kernel table. Prints a Markdown table of
microseconds per call; times() returns the rows.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import bench_generate as bg  # noqa: E402
from flash_decode import _decode_attn  # noqa: E402
from utils import require_gpu  # noqa: E402

# (BLOCK_M, BLOCK_N, num_warps, num_stages): the default and its neighbours
CONFIGS = [(16, 64, 4, 3), (16, 128, 4, 3), (16, 128, 4, 4), (16, 64, 4, 4)]
POINTS = [(1024, 1), (4096, 1), (8192, 1), (16384, 1), (32768, 1), (8192, 8), (32768, 8)]


def times(points=POINTS, configs=CONFIGS) -> list[dict]:
    """Per (cache, batch): cuDNN's time, ours at the defaults, and ours at each config and split count (us)."""
    rows = []
    for cache, batch in points:
        qs, kvs, seqlens = bg._decode_inputs(cache, batch)
        providers = bg._providers()
        row = {'cache': cache, 'batch': batch}
        for name, key in (('cudnn', 'cudnn'), ('ours', 'default')):
            row[key] = bg.graph_us([lambda q=q, kv=kv, f=providers[name]: f(q, kv, seqlens) for q, kv in zip(qs, kvs)])
        for config in configs:
            for n in ((16, 32, 64) if batch == 1 else (4, 8)):
                def call(q, kv, n=n, config=config):
                    return _decode_attn(q, kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2), seqlens,
                                        bg.D ** -0.5, n, config)
                row[f"{config[1]}/{config[2]}/{config[3]} x{n}"] = bg.graph_us(
                    [lambda q=q, kv=kv: call(q, kv) for q, kv in zip(qs, kvs)])
        rows.append(row)
        del qs, kvs
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    keys = ['cudnn', 'default'] + sorted({k for r in rows for k in r} - {'cache', 'batch', 'cudnn', 'default'})
    lines = ["| cache | batch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['cache']} | {r['batch']} | " + " | ".join(bg.fmt(r.get(k, float('nan')), '.1f')
                                                                     for k in keys) + " |")
    return "\n".join(lines)


if __name__ == '__main__':
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    require_gpu('tools/decode_tiles.py')
    print(table(times()))
