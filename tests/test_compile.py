"""torch.compile: a GPT with attn='triton' compiles with no graph break, trains, and matches the eager model.

On the CPU the kernel runs through Triton's interpreter inside the compiled graph (inductor's CPU backend); on a
GPU the same test runs the real kernels under inductor's CUDA backend.
"""
import torch

from helpers import TRITON_DEVICE
from model import GPT, GPTConfig

SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=65, dropout=0.0, bias=True, attn='triton')
# fp32 throughout: inductor fuses and reorders the surrounding elementwise ops, so eager and compiled differ by
# summation order only (measured ~1e-7 on the losses here); a traced-wrong kernel call (scale, layout, a missing
# backward) moves the loss by >1e-2.
TOL = 1e-5


def three_steps(model: GPT, batches) -> list[float]:
    # SGD, not Adam: Adam divides by the gradient's own scale, which turns the rounding noise on gradients that
    # are zero in exact arithmetic (the key bias: softmax ignores a constant added to every score) into full steps
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for idx, targets in batches:
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_compiled_model_trains_and_matches_eager():
    torch.manual_seed(0)
    eager = GPT(GPTConfig(**SMALL)).to(TRITON_DEVICE)
    compiled_base = GPT(GPTConfig(**SMALL)).to(TRITON_DEVICE)
    compiled_base.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(1)
    batch = (torch.randint(0, 65, (4, 16), generator=g).to(TRITON_DEVICE),
             torch.randint(0, 65, (4, 16), generator=g).to(TRITON_DEVICE))
    batches = [batch] * 3  # one batch, three steps: the loss on it must fall

    torch._dynamo.reset()
    # fullgraph: any graph break (an untraceable kernel call) is an error instead of a silent slow path
    compiled = torch.compile(compiled_base, fullgraph=True)
    want = three_steps(eager, batches)
    got = three_steps(compiled, batches)
    assert got[-1] < got[0], f"compiled model did not learn: {got}"
    for step, (a, b) in enumerate(zip(want, got)):
        assert abs(a - b) <= TOL * abs(a), f"step {step}: eager loss {a:.6f}, compiled {b:.6f}"
    for (name, p), q in zip(eager.named_parameters(), compiled_base.parameters()):
        torch.testing.assert_close(q, p, atol=TOL, rtol=TOL, msg=name)
