"""
A GPT-2 style decoder-only transformer, in one file, in the spirit of nanoGPT's model.py.

The attention implementation is one explicit setting, GPTConfig.attn:
  'triton' - our causal flash-attention kernel (flash_kernel.py), imported only when chosen
  'sdpa'   - torch.nn.functional.scaled_dot_product_attention
  'naive'  - matmul, causal mask, softmax, matmul, written out
All three own exactly the same parameters, so a checkpoint trained with one loads and runs with another.
The names and shapes of the parameters are GPT-2's, so OpenAI's weights load (hf_gpt2.py) and ours export.

Generation (GPT.generate) keeps a static KV cache (KVCache): the prompt is run once (prefill, with the same causal
attention as training), then each new token attends to the cached keys and values of all earlier ones
(decode_one_token; with attn='triton' through flash_decode.py's kernel). On a GPU the decode step is compiled by
torch.compile, which fuses its small kernels, then captured once as a CUDA graph and replayed, and tokens are sampled
on the GPU, so a generation never waits on the host per token.
"""

import math
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTN_IMPLS = ('triton', 'sdpa', 'naive')
# logits / temperature is taken in fp32: far below this the quotient overflows to inf and sampling breaks (NaN),
# while any temperature this low already picks the most likely token every time
MIN_TEMPERATURE = 1e-4


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
        for name in ('block_size', 'vocab_size', 'n_layer', 'n_head', 'n_embd'):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head != 0:  # after the check above: n_head = 0 would divide by zero here
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                             f"each head gets n_embd // n_head channels")
        if type(self.bias) is not bool:  # bool('no') is True
            raise ValueError(f"bias must be True or False, got {self.bias!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.attn == 'triton':
            try:
                from flash_kernel import SUPPORTED_HEAD_DIMS  # lazy: the repo must work where triton is missing
            except ImportError:
                SUPPORTED_HEAD_DIMS = None  # attn='triton' then fails where it runs, saying triton is missing
            head_dim = self.n_embd // self.n_head
            if SUPPORTED_HEAD_DIMS and head_dim not in SUPPORTED_HEAD_DIMS:
                raise ValueError(f"attn='triton' supports head dims {SUPPORTED_HEAD_DIMS}, and n_embd={self.n_embd} / "
                                 f"n_head={self.n_head} is {head_dim}: change n_head, or use attn='sdpa'")
        if self.gelu_approximate not in ('none', 'tanh'):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {self.gelu_approximate!r}")


def _triton_interpreting() -> bool:
    try:
        from flash_kernel import interpreting  # lazy: the repo must work where triton is missing
    except ImportError:
        return False
    return interpreting()


def check_attn_device(attn: str, device_type: str, dtype: str = 'float32') -> None:
    """Fail early, with what to do instead, when attn='triton' cannot run on this device in this dtype."""
    if attn != 'triton' or device_type == 'cuda':
        return
    if not _triton_interpreting():
        raise RuntimeError(
            f"attn='triton' needs a CUDA GPU, and this run is on {device_type!r}. "
            "Use attn='sdpa' or attn='naive' (e.g. --attn=sdpa), or set TRITON_INTERPRET=1 in the "
            "environment before starting Python to run the kernel in Triton's (very slow) interpreter.")
    if dtype == 'bfloat16':
        raise RuntimeError("attn='triton' with dtype='bfloat16' under TRITON_INTERPRET=1: Triton's interpreter "
                           "computes bf16 dot products wrongly; use --dtype=float32 there, or a GPU without the "
                           "interpreter.")
    from flash_kernel import interpreter_problem  # interpreting, so triton is there
    if problem := interpreter_problem():
        raise RuntimeError(f"attn='triton' on {device_type!r} runs in Triton's interpreter, and {problem}; "
                           "or use attn='sdpa' or attn='naive'.")


# ----------------------------------------------------------------------------------------------------------------
# The KV cache


class KVCache:
    """Keys and values of every layer at every position of a (batch_size, block_size) window, allocated once.

    kv[layer] is (B, 2, n_head, block_size, head_dim): k and v in one tensor, so one indexed write stores both, and
    each head's keys (and values) contiguous, so attention streams them.
    seqlens (B,) int32 counts each row's filled positions. It lives on the device and the model advances it in
    place, so a decode step captured in a CUDA graph finds the right positions at every replay. The caller keeps
    seqlens + (new tokens) <= block_size: there are no position embeddings past it (GPT.generate's policy).
    """

    def __init__(self, config: GPTConfig, batch_size: int, dtype: torch.dtype, device: torch.device | str):
        H, D = config.n_head, config.n_embd // config.n_head
        # zeros, not empty: sdpa and naive weigh the unfilled positions by exactly 0, and 0 x NaN would be NaN
        self.kv = torch.zeros((config.n_layer, batch_size, 2, H, config.block_size, D), dtype=dtype, device=device)
        self.layers = self.kv.unbind(0)  # n_layer views (B, 2, nh, block_size, hs)
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=device)  # (B,)
        self.rows = torch.arange(batch_size, device=device)[:, None]  # (B, 1), for the indexed writes
        self.empty = True  # on the host: nothing stored since the last reset (the next forward is a prefill)

    def reset(self) -> None:
        self.seqlens.zero_()
        self.empty = True

    def step(self, T: int, with_mask: bool) -> '_CacheStep':
        """The positions, lengths and (for sdpa / naive) mask that every layer of one forward of T tokens uses."""
        S = self.kv.size(4)
        pos = self.seqlens.long()[:, None] + torch.arange(T, device=self.seqlens.device)  # (B, T)
        visible = None
        if with_mask:  # key j is visible to the query at position p when j <= p: causal, bottom-right aligned
            visible = (torch.arange(S, device=pos.device) <= pos[:, :, None])[:, None]  # (B, 1, T, S)
        return _CacheStep(self.rows, pos, self.seqlens + T, visible, self.empty)


@dataclass
class _CacheStep:
    rows: torch.Tensor  # (B, 1) batch row indices
    pos: torch.Tensor  # (B, T) positions of the new tokens
    seqlens: torch.Tensor  # (B,) int32, filled positions once the new tokens are in
    visible: torch.Tensor | None  # (B, 1, T, block_size) bool attention mask; sdpa and naive only
    prefill: bool  # the cache was empty: the new tokens attend to each other only


LayerCache = tuple[torch.Tensor, _CacheStep]  # one layer's (B, 2, nh, block_size, hs) cache and the shared step


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
            from flash_decode import flash_attn_with_kvcache
            self.flash_attn_qkvpacked = flash_attn_qkvpacked
            self.flash_attn_with_kvcache = flash_attn_with_kvcache
        if self.attn == 'naive':
            # not persistent: it is derived, and keeping it out of the state_dict is what lets
            # checkpoints move between attention implementations
            mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
            self.register_buffer('mask', mask.view(1, 1, config.block_size, config.block_size), persistent=False)

    def forward(self, x: torch.Tensor, cache: 'LayerCache | None' = None) -> torch.Tensor:
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # q, k, v for all heads, one tensor
        y = self._causal_attention(qkv) if cache is None else self._cached_attention(qkv, cache)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def _causal_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """The T tokens of qkv (B, T, 3, nh, hs) attending to each other, causally; returns (B, T, C)."""
        B, T, _, nh, hs = qkv.size()
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
        return y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, C)

    def _cached_attention(self, qkv: torch.Tensor, cache: 'LayerCache') -> torch.Tensor:
        """Store the new tokens' k, v in this layer's cache, then attend from their queries to every filled cache
        position up to their own; returns (B, T, C)."""
        B, T, _, nh, hs = qkv.size()
        kv, step = cache
        if kv.dtype != qkv.dtype:  # the indexed write below would fail deep inside torch
            raise ValueError(f"the KV cache holds {kv.dtype} and the model makes {qkv.dtype} keys: make the cache in "
                             f"the dtype the model computes in (under autocast, the autocast dtype)")
        kv[step.rows, :, :, step.pos] = qkv[:, :, 1:]  # (B, T, 2, nh, hs) into the cache at the new positions
        if step.prefill:  # the cache held nothing before these tokens: plain causal attention among them
            return self._causal_attention(qkv)
        q = qkv[:, :, 0]  # (B, T, nh, hs)
        k, v = kv.unbind(1)  # (B, nh, block_size, hs) each
        if self.attn == 'triton':
            y = self.flash_attn_with_kvcache(q, k.transpose(1, 2), v.transpose(1, 2), step.seqlens)  # (B, T, nh, hs)
            return y.view(B, T, nh * hs)
        # sdpa and naive see the whole cache, unfilled positions included, under a mask: static shapes, so a
        # CUDA graph captures them
        q = q.transpose(1, 2)  # (B, nh, T, hs)
        if self.attn == 'sdpa':
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=step.visible)  # (B, nh, T, hs)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, S)
            att = att.masked_fill(~step.visible, float('-inf'))
            y = F.softmax(att, dim=-1) @ v  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, C)


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

    def forward(self, x: torch.Tensor, cache: 'LayerCache | None' = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)  # pre-LN: the residual stream itself is never normalized
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

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (and the loss, given targets) for idx (B, T). With a cache, the T tokens are the ones that follow
        its filled positions: their keys and values are stored in it, they attend to everything before them, and
        the cache advances by T."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.size()
        if B == 0 or T == 0:
            raise ValueError(f"idx must hold at least one row of at least one token, got shape {tuple(idx.shape)}")
        if T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {T}: block_size is only {self.config.block_size}")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
        if cache is None:
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        else:
            if targets is not None or B != cache.kv.size(1):
                got = f"batch {B}" + (" and targets" if targets is not None else "")
                raise ValueError(f"a forward through a KV cache takes no targets and the cache's batch size "
                                 f"({cache.kv.size(1)}), got {got}")
            if torch.is_grad_enabled():  # the cache is written in place, which autograd cannot follow
                raise ValueError("a forward through a KV cache is inference only: run it under torch.no_grad() "
                                 "(GPT.generate, prefill and decode_one_token do)")
            step = cache.step(T, with_mask=self.config.attn != 'triton')
            pos = step.pos  # (B, T)

        tok_emb = self.transformer.wte(idx)  # (B, T, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (T, n_embd), or (B, T, n_embd) with a cache
        x = self.transformer.drop(tok_emb + pos_emb)
        if cache is None:
            for block in self.transformer.h:
                x = block(x)
        else:
            for block, kv in zip(self.transformer.h, cache.layers):
                x = block(x, (kv, step))
            cache.seqlens.copy_(step.seqlens)
            cache.empty = False
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)  # (B, T, vocab_size)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            # inference: only the last position's logits are needed; the slice keeps the time dim (a list index
            # would too, but through a host-to-device copy of the index, which a CUDA graph cannot capture)
            logits = self.lm_head(x[:, -1:, :])  # (B, 1, vocab_size)
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
                 top_k: int | None = None, kv_cache: bool = True, compile: bool | None = None) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens; returns (B, T + max_new_tokens). Call model.eval()
        first. temperature divides the logits; top_k keeps only the k most likely tokens (top_k=1: greedy).

        kv_cache=True runs the prompt once (prefill), then one token at a time against a KV cache
        (decode_one_token), sampling on the device; on a GPU the decode step is a CUDA graph, captured at the second
        step and replayed after that. The cache, the graph and the nn.Linear weights cast to the autocast dtype are
        kept on the model for the next call with the same batch size, device, autocast dtype and sampling settings
        (the cast weights are refreshed at every call). kv_cache=False runs the whole context again for every token.

        compile (the cached path only): True compiles the decode step with torch.compile (inductor) at its first call,
        which fuses its chain of small kernels (LayerNorm, casts, bias, GELU, residual adds, the cache write) before
        the graph captures it. Compiling is paid once per kept state, so once per run for a fixed batch size and
        sampling settings: seconds to tens of seconds (bench_generate.py reports it as the warm-up). None, the
        default: on a GPU only. The prefill runs eagerly: its length changes from call to call.

        Past block_size: there are position embeddings for block_size positions only. Without the cache the context
        is cropped to the last block_size tokens at every step. Cached positions are absolute and cannot slide, so
        when the cache is full the last block_size // 2 tokens are prefilled again into the emptied cache and
        decoding goes on from there: the context drops to half the window and grows back, one re-prefill every
        block_size // 2 tokens. Both paths predict each token from the whole sequence before it, so they agree,
        while the sequence is at most block_size + 1 tokens long.
        """
        if not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
            raise ValueError(f"temperature must be a number >= {MIN_TEMPERATURE:g}, got {temperature} (for greedy "
                             f"decoding use top_k=1)")
        for name, value, allowed in (('max_new_tokens', max_new_tokens, 'an int >= 0'),
                                     ('top_k', 0 if top_k is None else top_k, 'None or an int >= 0 (1: greedy)')):
            if type(value) is not int or value < 0:
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.size(0) == 0 or idx.size(1) == 0:
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be (batch, time) token ids, at least one token in at least one row, got "
                             f"{got}")
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        lo, hi = torch.stack(torch.aminmax(idx)).tolist()  # one host sync per call, before any work
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"idx holds token ids from {lo} to {hi}, outside the model's vocabulary "
                             f"[0, {self.config.vocab_size})")
        idx = idx.long()  # both paths return int64 ids, as torch.multinomial and argmax make them
        if kv_cache:
            if compile is None:
                # the default: compiled on a GPU; on a CPU inductor's C++ build (tens of seconds) outweighs the gain
                compile = idx.device.type == 'cuda'
            return self._generate_cached(idx, max_new_tokens, temperature, top_k, compile)
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

    def _generate_cached(self, idx: torch.Tensor, max_new_tokens: int, temperature: float,
                         top_k: int | None, compile: bool) -> torch.Tensor:
        B, T = idx.size()
        if max_new_tokens <= 0:
            return idx
        decoder = self._decoder_for(B, idx.device, temperature, top_k, compile)
        window = self.config.block_size
        out = torch.empty((B, T + max_new_tokens), dtype=idx.dtype, device=idx.device)
        out[:, :T] = idx
        context = idx[:, -window:]
        tok = decoder.prefill(self, context)  # (B, 1), token T
        filled = context.size(1)  # cache positions in use, tracked on the host: the policy needs no sync
        for n in range(T, T + max_new_tokens):
            out[:, n:n + 1] = tok  # token n
            if n + 1 == T + max_new_tokens:
                break
            if filled == window:  # no position left for token n: prefill the last half window again, token n last
                keep = max(1, window // 2)
                tok = decoder.prefill(self, out[:, n + 1 - keep:n + 1])
                filled = keep
            else:
                tok = decoder.decode(self, tok)
                filled += 1
        return out

    def _decoder_for(self, batch_size: int, device: torch.device, temperature: float,
                     top_k: int | None, compile: bool) -> '_Decoder':
        key = _Decoder.key(self, batch_size, device, temperature, top_k, compile)
        decoder = self.__dict__.get('_decoder')
        if decoder is None or decoder.key != key:
            self._decoder = None  # free the old cache and graph before allocating new ones
            decoder = self._decoder = _Decoder(self, key, batch_size, device, temperature, top_k, compile)
        else:
            decoder.refresh_weights()
        return decoder


# ----------------------------------------------------------------------------------------------------------------
# Generation through the KV cache


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """One token per row drawn from logits (B, vocab_size), on the logits' device with no host sync; returns
    (B, 1). top_k=1 is greedy (the argmax, no randomness); None or 0 samples from the whole vocabulary."""
    if top_k == 1:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits.float() / temperature  # (B, vocab_size)
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float('-inf'))
    probs = F.softmax(logits, dim=-1)  # (B, vocab_size)
    # The exponential race: with E_i ~ Exp(1) independent, argmax_i p_i / E_i is token i with probability p_i
    # (E_i / p_i are exponentials of rates p_i, and the smallest of them is the i-th with that probability).
    # Unlike torch.multinomial it never reads a value back to the host, so a CUDA graph can capture it.
    race = torch.empty_like(probs).exponential_(1.0)
    return torch.argmax(probs / race, dim=-1, keepdim=True)


def _forward(model: GPT, idx: torch.Tensor, cache: KVCache, weights: dict | None) -> torch.Tensor:
    # weights: tensors to use in place of some of the model's parameters (the nn.Linear ones cast for autocast)
    if weights:
        logits, _ = torch.func.functional_call(model, weights, (idx,), {'cache': cache}, tie_weights=False,
                                               strict=False)
    else:
        logits, _ = model(idx, cache=cache)
    return logits[:, -1]  # (B, vocab_size)


@torch.no_grad()
def prefill(model: GPT, idx: torch.Tensor, cache: KVCache, temperature: float = 1.0, top_k: int | None = None,
            weights: dict | None = None) -> torch.Tensor:
    """Empty the cache, run the prompt idx (B, T) into it, and sample the token that follows; returns (B, 1)."""
    cache.reset()
    return sample_next(_forward(model, idx, cache, weights), temperature, top_k)


@torch.no_grad()
def decode_one_token(model: GPT, tok: torch.Tensor, cache: KVCache, temperature: float = 1.0,
                     top_k: int | None = None, weights: dict | None = None) -> torch.Tensor:
    """Run tok (B, 1) at the cache's next position and sample the token after it; returns (B, 1). Every shape is
    static and the position lives on the device, so this is what a CUDA graph captures."""
    return _decode_step(model, tok, cache, temperature, top_k, weights)


def _decode_step(model: GPT, tok: torch.Tensor, cache: KVCache, temperature: float, top_k: int | None,
                 weights: dict | None) -> torch.Tensor:
    # decode_one_token without its no_grad decorator: the function _Decoder compiles (its caller turns gradients off)
    return sample_next(_forward(model, tok, cache, weights), temperature, top_k)


def _compiled_decode_step() -> Callable:
    """_decode_step compiled by torch.compile, from a private copy of its code object. torch.compile keeps the graphs
    it compiles per code object, at most torch._dynamo.config.recompile_limit (8) of them, and with fullgraph=True
    one more is an error: a process that makes many decoders (a benchmark over models, batch sizes and sampling
    settings) would hit it. Each copy's graph belongs to its decoder and goes with it."""
    code = _decode_step.__code__
    fn = types.FunctionType(code.replace(), _decode_step.__globals__, code.co_name)
    # fullgraph: a graph break (an untraceable call) is an error rather than a silently slower step; dynamic=False:
    # every shape of a decode step is fixed for the decoder's life
    return torch.compile(fn, fullgraph=True, dynamic=False)


class _Decoder:
    """What GPT.generate(kv_cache=True) keeps between calls with the same settings: the KV cache, the nn.Linear
    weights cast once to the autocast dtype (autocast would cast every weight again at every step: 4 bytes read and
    2 written per parameter, three times the bytes of the cast weights the step then reads, and a kernel each),
    the decode step (compiled by torch.compile when asked), and on a GPU that step as a CUDA graph."""

    @staticmethod
    def key(model: GPT, batch_size: int, device: torch.device, temperature: float, top_k: int | None,
            compile: bool) -> tuple:
        autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        # the parameters' addresses: a graph reads weights where they were at capture
        params = tuple(p.data_ptr() for p in model.parameters())
        return (batch_size, torch.device(device), autocast, temperature, top_k, compile, model.training, params)

    def __init__(self, model: GPT, key: tuple, batch_size: int, device: torch.device, temperature: float,
                 top_k: int | None, compile: bool):
        self.key = key
        self.autocast = key[2]
        self.sampling = (temperature, top_k)
        self.device = torch.device(device)
        dtype = self.autocast or model.lm_head.weight.dtype  # the dtype of the k, v the model computes
        self.cache = KVCache(model.config, batch_size, dtype, device)
        self.casts = []  # (parameter name, its cast copy, the parameter)
        if self.autocast is not None:
            for mod_name, mod in model.named_modules():
                if isinstance(mod, nn.Linear):
                    for name, p in mod.named_parameters(recurse=False):
                        if p.dtype != self.autocast:
                            self.casts.append((f"{mod_name}.{name}", p.detach().to(self.autocast), p))
        self.weights = {name: w for name, w, _ in self.casts} or None
        self.step_fn = _compiled_decode_step() if compile else _decode_step
        self.warm = False
        self.graph = None

    def refresh_weights(self) -> None:
        for _, w, p in self.casts:
            w.copy_(p.detach())

    def prefill(self, model: GPT, idx: torch.Tensor) -> torch.Tensor:
        return prefill(model, idx, self.cache, *self.sampling, weights=self.weights)

    def _step(self, model: GPT, tok: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.step_fn(model, tok, self.cache, *self.sampling, self.weights)

    def decode(self, model: GPT, tok: torch.Tensor) -> torch.Tensor:
        if self.device.type != 'cuda':
            return self._step(model, tok)
        # autocast must not cache casts during capture: a cached tensor is freed when the caller's autocast region
        # ends, under the graph's feet. The first step runs under the same setting, so that what torch.compile
        # compiled there is what the capture replays (its guards check the autocast state).
        autocast = torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None,
                                  cache_enabled=False)
        if not self.warm:
            # the first step runs outside the graph: torch.compile traces and compiles the step here (when asked),
            # and Triton kernels compile and cuBLAS sets up, none of which a capture may do
            self.warm = True
            with autocast:
                return self._step(model, tok)
        if self.graph is None:
            self.tok_in = tok.clone()  # (B, 1), the graph's input
            self.graph = torch.cuda.CUDAGraph()
            with autocast, torch.cuda.graph(self.graph):
                self.tok_out = self._step(model, self.tok_in)
        self.tok_in.copy_(tok)
        self.graph.replay()  # capturing ran nothing: this is the step
        return self.tok_out
