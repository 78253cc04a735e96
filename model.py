"""
A GPT-2 style decoder-only transformer, in one file, in the spirit of nanoGPT's model.py.

The attention implementation is one explicit setting, GPTConfig.attn:
  'triton' - our causal flash-attention kernel (flash_kernel.py), imported only when chosen
  'sdpa'   - torch.nn.functional.scaled_dot_product_attention
  'naive'  - matmul, causal mask, softmax, matmul, written out
All three own exactly the same parameters, so a checkpoint trained with one loads and runs with another.
The names and shapes of the parameters are GPT-2's, so OpenAI's weights load (hf_gpt2.py) and ours export.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTN_IMPLS = ('triton', 'sdpa', 'naive')


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, like GPT-2; False is a little better and faster
    attn: str = 'sdpa'  # 'triton' | 'sdpa' | 'naive'; sdpa by default because it runs on any device
    # the MLP's GELU: 'none' = exact (erf), 'tanh' = the tanh approximation OpenAI's GPT-2 was trained with
    # (loading its weights turns it on). A checkpoint saved before this setting existed lacks it: 'none'.
    gelu_approximate: str = 'none'

    def __post_init__(self):
        if self.attn not in ATTN_IMPLS:
            raise ValueError(f"attn must be one of {ATTN_IMPLS}, got {self.attn!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                             f"each head gets n_embd // n_head channels")
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.gelu_approximate not in ('none', 'tanh'):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")


def check_attn_device(attn: str, device_type: str) -> None:
    """Fail early, with what to do instead, when attn='triton' cannot run on this device."""
    if attn == 'triton' and device_type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
        raise RuntimeError(
            f"attn='triton' needs a CUDA GPU, and this run is on {device_type!r}. "
            "Use attn='sdpa' or attn='naive' (e.g. --attn=sdpa), or set TRITON_INTERPRET=1 in the "
            "environment before starting Python to run the kernel in Triton's (very slow) interpreter.")


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        # q, k, v projections for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)  # used by 'naive' only; sdpa and triton take dropout_p
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attn = config.attn
        if self.attn == 'triton':
            try:
                from flash_kernel import flash_attn_qkvpacked  # lazy: the repo must work where triton is missing
            except ImportError as e:
                raise ImportError(f"attn='triton' needs triton and flash_kernel.py ({e}); "
                                  "install triton, or use attn='sdpa' or attn='naive'") from e
            self.flash_attn_qkvpacked = flash_attn_qkvpacked
        if self.attn == 'naive':
            # not persistent: it is derived, and keeping it out of the state_dict is what lets
            # checkpoints move between attention implementations
            mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
            self.register_buffer('mask', mask.view(1, 1, config.block_size, config.block_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # q, k, v for all heads, one tensor
        q, k, v = [t.transpose(1, 2) for t in qkv.unbind(2)]  # (B, nh, T, hs) views, no copies
        dropout_p = self.dropout if self.training else 0.0
        if self.attn == 'triton':
            # qkv itself, not q, k, v: the kernel's backward then writes one gradient for it, where three would
            # leave autograd a concatenation (a copy of 3 x (B, T, C)) to make
            y = self.flash_attn_qkvpacked(qkv, causal=True, dropout_p=dropout_p).transpose(1, 2)  # (B, nh, T, hs)
        elif self.attn == 'sdpa':
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=dropout_p, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
            att = att.masked_fill(~self.mask[:, :, :T, :T], float('-inf'))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v  # (B, nh, T, hs)
        # free for the kernel's output, stored as (B, T, nh, hs); one copy for sdpa / naive, as in nanoGPT
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate=config.gelu_approximate)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # pre-LN: the residual stream itself is never normalized
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying (https://paperswithcode.com/method/weight-tying): one matrix embeds and un-embeds
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2 scales the init of the projections into the residual stream by 1/sqrt(2 * n_layer), so the
        # variance of the residual stream does not grow with depth (two such projections per block)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. The position embeddings are left out by default; the token embeddings stay
        in because, tied to lm_head, they do a matmul's worth of work."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {T}: block_size is only {self.config.block_size}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)

        tok_emb = self.transformer.wte(idx)  # (B, T, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (T, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            # inference: only the last position's logits are needed; the list index keeps the time dim
            logits = self.lm_head(x[:, [-1], :])  # (B, 1, vocab_size)
            loss = None
        return logits, loss

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                             device_type: str) -> torch.optim.AdamW:
        # decay the matrices (matmul weights and embeddings); not the biases and LayerNorm gains,
        # which are 1-d and where decay only pulls them toward a bad default
        params = [p for p in self.parameters() if p.requires_grad]  # the tied matrix appears once
        decay_params = [p for p in params if p.dim() >= 2]
        nodecay_params = [p for p in params if p.dim() < 2]
        groups = [
            {'params': decay_params, 'weight_decay': weight_decay},
            {'params': nodecay_params, 'weight_decay': 0.0},
        ]
        # fused AdamW: one kernel for the whole update instead of a handful per tensor
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=(device_type == 'cuda'))

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at sequence length block_size.

        Convention: the PaLM paper's (appendix B), as nanoGPT's estimate_mfu uses it: 6 FLOPs per parameter
        per token for the matmuls (2 forward, 4 backward), plus 12 * n_layer * n_head * head_dim * T for the
        two attention matmuls (QK^T and PV, 2 * 2 * T * head_dim per head forward, x3 with backward).
        The attention term counts the full T x T square; a causal kernel does about half of it, so this
        overstates useful work by 6 * L * H * hs * T per token. Keeping nanoGPT's convention makes our MFU
        directly comparable with the numbers it prints.
        """
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens. Call model.eval() first."""
        if temperature <= 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature} (for greedy decoding use top_k=1)")
        for _ in range(max_new_tokens):
            # the model has position embeddings for block_size positions only: keep the last block_size tokens
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature  # (B, vocab_size)
            if top_k is not None and top_k > 0:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
