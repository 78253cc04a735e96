"""
GPT-2 124M's real shape through hf_gpt2.py, on a CUDA GPU. A randomly initialised GPT-2 (12 layers, 768 wide,
vocabulary 50257, context 1024) is made with transformers and saved with save_pretrained, so no download is needed;
hf_gpt2.load, what --init_from=<dir> runs, reads it into our GPT, and every position's logits are compared:

  ours attn=triton, bf16 autocast  against transformers fp32 (eager attention) and transformers bf16 autocast
  ours attn=sdpa,   bf16 autocast  against the same two: the error bf16 itself makes, for scale
  ours attn=triton against ours attn=sdpa, both bf16: the error our kernel has against SDPA on this model
  ours attn=triton, fp32           against transformers fp32: the weight mapping at full size

Then it writes token data for finetuning (GPT-2 ids from a random Markov chain: 2048 of the 50257 ids, four
successors each, so a model has something to learn) and prints the command that finetunes the saved GPT-2 with
config/finetune_shakespeare.py on it, and the one that samples token ids from the result.

    python tools/hf_gpt2_check.py [--work_dir /tmp/hf_gpt2_check] [--batch_size 4]
    python tools/hf_gpt2_check.py --sample_from /tmp/hf_gpt2_check/out    # after the finetune
"""
import argparse
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import hf_gpt2  # noqa: E402
from utils import load_checkpoint, model_from_checkpoint  # noqa: E402

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)
CHAIN_STATES = 2048  # distinct token ids in the finetuning data
CHAIN_SUCCESSORS = 4  # each id is followed by one of four: the first with probability 0.7, else any of the four


def make_gpt2_dir(hf_dir: str, shape: dict = GPT2_124M, seed: int = 0) -> None:
    """A random-init GPT-2 of the given shape, saved by transformers into hf_dir. Its LayerNorm gains and biases get
    N(0, 0.02) noise, so that none of them is the init's exact 1 or 0."""
    import transformers
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(hf_dir)


def _errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = got.float() - want.float()
    return {'max_abs': diff.abs().max().item(), 'rel_l2': (diff.norm() / want.float().norm()).item()}


@torch.no_grad()
def logit_errors(hf_dir: str, batch_size: int = 4, device: str = 'cuda') -> list[dict]:
    """Rows {'ours', 'reference', 'max_abs', 'rel_l2'} over every position's logits of batch_size sequences of
    random ids as long as the model's context. bf16 is autocast (fp32 weights, bf16 matmuls), as train.py runs."""
    import transformers
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, attn_implementation='eager').float().eval()
    ckpt = hf_gpt2.load(hf_dir)  # what --init_from=<dir> runs
    shape = (batch_size, hf_model.config.n_positions)
    idx = torch.randint(0, hf_model.config.vocab_size, shape, generator=torch.Generator().manual_seed(1)).to(device)
    bf16 = torch.autocast(device.split(':')[0], dtype=torch.bfloat16)
    saved_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision('highest')  # fp32 means fp32: no TF32 in the fp32 rows
    try:
        hf_model.to(device)
        logits = {'transformers fp32': hf_model(idx).logits}  # (B, T, vocab)
        with bf16:
            logits['transformers bf16'] = hf_model(idx).logits
        hf_model.cpu()
        for attn in ('triton', 'sdpa'):
            model = model_from_checkpoint(ckpt, attn=attn).to(device).eval()
            with bf16:
                logits[f'{attn} bf16'], _ = model(idx, targets=idx)  # given targets, forward returns every position
            if attn == 'triton':
                logits['triton fp32'], _ = model(idx, targets=idx)
            model.cpu()
    finally:
        torch.set_float32_matmul_precision(saved_precision)
    pairs = [('triton bf16', 'transformers fp32'), ('sdpa bf16', 'transformers fp32'),
             ('triton bf16', 'transformers bf16'), ('sdpa bf16', 'transformers bf16'),
             ('triton bf16', 'sdpa bf16'), ('triton fp32', 'transformers fp32')]
    return [{'ours': a, 'reference': b, **_errors(logits[a], logits[b])} for a, b in pairs]


def make_chain_data(data_dir: str, n_train: int = 1_000_000, n_val: int = 100_000, seed: int = 0) -> dict:
    """train.bin, val.bin (uint16 GPT-2 ids from a random Markov chain), meta.pkl (GPT-2 BPE) and chain.npz (the
    chain, for checking samples) in data_dir. Returns the chain's ids and successor table."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(GPT2_124M['vocab_size'], CHAIN_STATES, replace=False)  # (S,)
    successors = rng.integers(0, CHAIN_STATES, (CHAIN_STATES, CHAIN_SUCCESSORS))  # (S, 4) state indices

    def walk(n: int) -> np.ndarray:
        states = np.empty(n, dtype=np.int64)
        likely = rng.random(n) < 0.7
        pick = rng.integers(0, CHAIN_SUCCESSORS, n)
        s = 0
        for i in range(n):
            states[i] = s
            s = successors[s, 0 if likely[i] else pick[i]]
        return ids[states].astype(np.uint16)

    os.makedirs(data_dir, exist_ok=True)
    walk(n_train).tofile(os.path.join(data_dir, 'train.bin'))
    walk(n_val).tofile(os.path.join(data_dir, 'val.bin'))
    with open(os.path.join(data_dir, 'meta.pkl'), 'wb') as f:
        pickle.dump({'tokenizer': 'gpt2', 'vocab_size': GPT2_124M['vocab_size']}, f)
    np.savez(os.path.join(data_dir, 'chain.npz'), ids=ids, successors=successors)
    return {'ids': ids, 'successors': successors}


@torch.no_grad()
def sample_ids(out_dir: str, data_dir: str, new_tokens: int = 200, attn: str = 'triton',
               device: str = 'cuda') -> dict:
    """Generate from the finetuned checkpoint in out_dir (bf16, prompted by the first 16 val tokens) and count the
    generated transitions the chain allows: ~0.02% (4 of 50257) for an untrained model, up to 100% for one that
    learned the chain."""
    chain = np.load(os.path.join(data_dir, 'chain.npz'))
    ids = chain['ids'].tolist()
    id_set = set(ids)
    allowed = {(ids[s], ids[n]) for s in range(CHAIN_STATES) for n in chain['successors'][s]}
    prompt = np.fromfile(os.path.join(data_dir, 'val.bin'), dtype=np.uint16)[:16].astype(np.int64)
    model = model_from_checkpoint(load_checkpoint(out_dir, device), attn=attn).to(device).eval()
    x = torch.from_numpy(prompt)[None].to(device)  # (1, 16)
    torch.manual_seed(0)
    with torch.autocast(device.split(':')[0], dtype=torch.bfloat16):
        y = model.generate(x, new_tokens, temperature=1.0, top_k=None)[0].tolist()
    pairs = list(zip(y[len(prompt) - 1:-1], y[len(prompt):]))
    return {'generated': len(pairs), 'in_chain_ids': sum(t in id_set for t in y[len(prompt):]),
            'allowed_transitions': sum(p in allowed for p in pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work_dir', default='/tmp/hf_gpt2_check', help='where the GPT-2 directory and data go')
    parser.add_argument('--batch_size', type=int, default=4, help='sequences of 1024 tokens in the logit check')
    parser.add_argument('--sample_from', default=None, help='a finetuned out_dir: sample ids from it instead')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this check needs a CUDA GPU (the CPU tests cover the small model: tests/test_hf_gpt2.py)")
    hf_dir, data_dir = os.path.join(args.work_dir, 'gpt2-random'), os.path.join(args.work_dir, 'data')
    if args.sample_from:
        r = sample_ids(args.sample_from, data_dir)
        print(f"{r['generated']} generated tokens: {r['in_chain_ids']} are ids of the chain, "
              f"{r['allowed_transitions']} transitions are ones the chain allows")
        return

    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | GPT-2 124M shape, random init, "
          f"{args.batch_size} x 1024 tokens, every position's logits")
    make_gpt2_dir(hf_dir)
    rows = logit_errors(hf_dir, args.batch_size)
    print("| ours | reference | max abs error | rel. L2 error |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['ours']} | {r['reference']} | {r['max_abs']:.2e} | {r['rel_l2']:.2e} |")
    err = {(r['ours'], r['reference']): r['rel_l2'] for r in rows}
    vs_fp32 = err['triton bf16', 'transformers fp32'] / err['sdpa bf16', 'transformers fp32']
    vs_bf16 = err['triton bf16', 'transformers bf16'] / err['triton bf16', 'sdpa bf16']
    print(f"against transformers fp32, triton bf16 has {vs_fp32:.2f}x the error sdpa bf16 has; against "
          f"transformers bf16, {vs_bf16:.2f}x the error it has against sdpa bf16")

    make_chain_data(data_dir)
    out_dir = os.path.join(args.work_dir, 'out')
    print(f"\nwrote {hf_dir} (config.json, model.safetensors) and {data_dir} (train.bin, val.bin, meta.pkl)")
    print("finetune it (attn=triton, compile on; the loss starts near ln(50257) = 10.8 and goes down):")
    print(f"  python train.py config/finetune_shakespeare.py --init_from={hf_dir} --data_dir={data_dir} "
          f"--out_dir={out_dir} --max_iters=50 --eval_interval=10")
    print("then sample token ids from it (the GPU machine has no GPT-2 BPE files to decode text with):")
    print(f"  python tools/hf_gpt2_check.py --work_dir={args.work_dir} --sample_from={out_dir}")


if __name__ == '__main__':
    main()
