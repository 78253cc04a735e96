"""
Random-weight checkpoints at the char model's and GPT-2 124M's shapes, for timing sample.py where there is no
dataset or trained model (a step's time does not depend on the weights).

    python tools/make_random_checkpoints.py OUT_ROOT [--attn=triton]
    python sample.py --out_dir=OUT_ROOT/gpt2 --num_samples=2 --max_new_tokens=500

Each checkpoint carries a character vocabulary of vocab_size code points (id i is chr(i), so the default prompt
'\\n' is id 10), which needs no BPE files; it only changes how sample.py prints the ids.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from model import ATTN_IMPLS, GPT, GPTConfig  # noqa: E402
from utils import save_checkpoint  # noqa: E402

SHAPES = {
    'char': dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
    'gpt2': dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
}


def make_random_checkpoint(out_dir: str, shape: str, attn: str = 'triton', seed: int = 0) -> str:
    """Write out_dir/ckpt.pt: a randomly initialised model of SHAPES[shape], as train.py saves one; returns its
    path."""
    args = dict(SHAPES[shape], dropout=0.0, bias=True, attn=attn)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**args))
    chars = [chr(i) for i in range(args['vocab_size'])]
    meta = {'tokenizer': 'char', 'vocab_size': len(chars), 'stoi': {c: i for i, c in enumerate(chars)},
            'itos': dict(enumerate(chars))}
    save_checkpoint({'model': model.state_dict(), 'optimizer': {}, 'model_args': args, 'iter_num': 0,
                     'best_val_loss': 0.0, 'config': {'dataset': f'random-{shape}'}, 'meta': meta}, out_dir)
    return os.path.join(out_dir, 'ckpt.pt')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_root', help="writes OUT_ROOT/char/ckpt.pt and OUT_ROOT/gpt2/ckpt.pt")
    parser.add_argument('--attn', default='triton', choices=ATTN_IMPLS)
    args = parser.parse_args()
    taken = [os.path.join(args.out_root, shape) for shape in SHAPES if os.path.exists(os.path.join(args.out_root, shape))]
    if taken or (os.path.exists(args.out_root) and not os.path.isdir(args.out_root)):
        # random weights must never replace a trained model (or anything else) that happens to be there
        raise SystemExit(f"error: {', '.join(taken) or args.out_root} exists already: give a new OUT_ROOT")
    for shape in SHAPES:
        print(make_random_checkpoint(os.path.join(args.out_root, shape), shape, args.attn))


if __name__ == '__main__':
    main()
