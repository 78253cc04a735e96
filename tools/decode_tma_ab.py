"""The decode kernel with its unmasked K/V loads through TMA descriptors (tools/decode_tma_variant.py, a copy of
flash_decode.py) against the shipped kernel and the read-only floor, GPU time, GPT-2 heads. python tools/decode_tma_ab.py"""
import os, sys, math
HERE = os.path.dirname(os.path.abspath(__file__)); sys.path[:0] = [os.path.dirname(HERE), HERE]
import torch, triton
import bench_generate as bg, flash_decode as fd, decode_tma_variant as fd_tma
from flash_decode import attention_with_kvcache_ref
H, D = 12, 64
sms = torch.cuda.get_device_properties(0).multi_processor_count
copy_bps = bg.copy_bandwidth()
print(f"{torch.cuda.get_device_name()} triton {triton.__version__} copy {copy_bps/1e9:.0f} GB/s")
rows = []
for cache in (1024, 4096, 8192, 16384, 32768):
    for batch in (1, 8):
        qs, kvs, lens = bg._decode_inputs(cache, batch)
        splits = fd._default_num_splits(batch * H, cache // 64, sms)
        k = lambda kv: kv[:, 0].transpose(1, 2)
        v = lambda kv: kv[:, 1].transpose(1, 2)
        want = attention_with_kvcache_ref(qs[0], k(kvs[0]), v(kvs[0]), lens)
        res = {}
        variants = {"shipped": lambda q, kv: fd._decode_attn(q, k(kv), v(kv), lens, D ** -0.5, splits)}
        for cfg in ((16, 64, 4, 3), (16, 64, 4, 4), (16, 128, 4, 3), (16, 64, 8, 3)):
            variants[f"tma {cfg[1]}/{cfg[2]}w/{cfg[3]}s"] = (lambda q, kv, cfg=cfg:
                fd_tma._decode_attn(q, k(kv), v(kv), lens, D ** -0.5, splits, config=cfg))
        for name, fn in variants.items():
            err = ((fn(qs[0], kvs[0]).float() - want).norm() / want.norm()).item()
            us = bg.graph_us([lambda q=q, kv=kv: fn(q, kv) for q, kv in zip(qs, kvs)])
            res[name] = (us, err)
        read = bg.graph_us([lambda kv=kv: bg.read_only(kv) for kv in kvs])
        mb = kvs[0].numel() * 2 / 1e6
        line = f"| {cache} | {batch} | {splits} | {mb:.1f} | read {read:.1f} ({100*mb*1e6/(read*1e-6)/copy_bps:.0f}%) | " + " | ".join(
            f"{n} {u:.1f} ({100*mb*1e6/(u*1e-6)/copy_bps:.0f}%, err {e:.0e})" for n, (u, e) in res.items())
        print(line, flush=True)
        del qs, kvs
        torch.cuda.empty_cache()
