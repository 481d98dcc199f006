"""BLOOM's forward pass as plain functions over weight dicts, one block at a time.

Matches transformers' BloomForCausalLM (scores + ALiBi with an fp32 softmax, through torch's fused attention;
tanh GELU with Megatron's constants), so float32 results agree to rounding. References: BLOOM (arXiv
2211.05100) and ALiBi (Press et al., arXiv 2108.12409). A pass's rows may belong to several sequences
(spans), each with its own cache and positions; shapes use T = new rows, L = a sequence's tokens so far,
H = hidden, nh = heads, hd = head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from bloomtui.engine.compute.matmul import DEFAULT, Matmul, Weight
from bloomtui.engine.weights.config import BloomConfig

Weights = dict[str, Weight]
SCORE_BYTES = 64 * 1024**2
"""Bound on one (nh, queries, L) fp32 score tensor: long prompts take their queries in chunks."""


def alibi_slopes(n_head: int) -> Tensor:
    """Per-head ALiBi slopes, including the interleaved extra slopes for non-power-of-two head counts."""
    p = 2 ** math.floor(math.log2(n_head))
    base = torch.tensor(2 ** (-(2 ** -(math.log2(p) - 3))), dtype=torch.float32)
    slopes = torch.pow(base, torch.arange(1, 1 + p, dtype=torch.int32))
    if p != n_head:
        extra_base = torch.tensor(2 ** (-(2 ** -(math.log2(2 * p) - 3))), dtype=torch.float32)
        extra = min(p, n_head - p)
        slopes = torch.cat([slopes, torch.pow(extra_base, torch.arange(1, 1 + 2 * extra, 2, dtype=torch.int32))])
    return slopes


def alibi_bias(n_head: int, max_len: int, dtype: torch.dtype) -> Tensor:
    """Slope * key position, computed in fp32 then cast as transformers does: (nh, 1, max_len)."""
    positions = torch.arange(max_len, dtype=torch.float32)
    return (alibi_slopes(n_head)[:, None, None] * positions[None, None, :]).to(dtype)


class Alibi:
    """The ALiBi bias for as many key positions as a run has reached. It grows by doubling, like the KV cache,
    so a huge max-new-tokens allocates nothing up front; each entry is computed elementwise, so a grown bias
    equals one made at full length."""

    def __init__(self, n_head: int, dtype: torch.dtype, capacity: int = 256) -> None:
        self.n_head, self.dtype = n_head, dtype
        self._bias = alibi_bias(n_head, capacity, dtype)
        self._slopes = alibi_slopes(n_head)

    def at(self, positions: Tensor) -> Tensor:
        """(nh, 1, n): the bias of keys at these positions (tree nodes: a slot holds the position of its depth),
        computed as upto() computes it, so a node's bias equals the one its position has in a chain."""
        return (self._slopes[:, None, None] * positions.to(torch.float32)[None, None, :]).to(self.dtype)

    def upto(self, end: int) -> Tensor:
        """(nh, 1, end): the bias of key positions 0..end-1."""
        if end > self._bias.shape[-1]:
            self._bias = alibi_bias(self.n_head, max(end, 2 * self._bias.shape[-1]), self.dtype)
        return self._bias[:, :, :end]


@dataclass
class KVCache:
    """Keys and values of one block for every position so far. It grows by doubling, so a long
    max-new-tokens costs memory only for the tokens actually generated (BLOOM-176B: ~4 MB per token)."""

    k: Tensor  # (nh, capacity, hd)
    v: Tensor  # (nh, capacity, hd)

    @classmethod
    def empty(cls, config: BloomConfig, capacity: int, dtype: torch.dtype) -> KVCache:
        shape = (config.n_head, capacity, config.head_dim)
        return cls(torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype))

    def reserve(self, filled: int, length: int) -> None:
        """Make room for `length` positions, keeping the first `filled`."""
        capacity = self.k.shape[1]
        if length <= capacity:
            return
        shape = (self.k.shape[0], max(length, 2 * capacity), self.k.shape[2])
        k, v = torch.empty(shape, dtype=self.k.dtype), torch.empty(shape, dtype=self.v.dtype)
        k[:, :filled] = self.k[:, :filled]
        v[:, :filled] = self.v[:, :filled]
        self.k, self.v = k, v

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()


def layer_norm(x: Tensor, w: Tensor, b: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def gelu(x: Tensor) -> Tensor:
    """BLOOM's tanh GELU with its exact constants (F.gelu's differ in the last digits)."""
    return x * 0.5 * (1.0 + torch.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))


@dataclass(frozen=True)
class TreeRows:
    """A span whose key slots from `first` on hold the nodes of a token tree rather than a chain: slot
    first + j has position `positions[j]` (its depth after the last kept token), and query row i sees every
    slot before `first` and the slots j where visible[i, j] (its ancestors and itself)."""

    first: int
    positions: Tensor  # (slots,) long
    visible: Tensor  # (rows, slots) bool
    _masks: dict = field(default_factory=dict, compare=False, repr=False)
    """(end, dtype) -> masks(): the same in every block, so made once per pass."""

    def rows(self, a: int, b: int) -> TreeRows:
        """The same tree for query rows a:b only (a pass may take a span's rows in chunks)."""
        if a == 0 and b >= self.visible.shape[0]:
            return self  # the whole tree, and what it already computed
        return TreeRows(self.first, self.positions, self.visible[a:b])

    def masks(self, alibi: Alibi, end: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(ALiBi bias (nh, 1, end) with the tree's slots at their depth positions, (rows, slots) mask of the
        slots a row must not see)."""
        key = (end, dtype)
        if key not in self._masks:
            bias = alibi.upto(end).clone()
            bias[:, :, self.first : end] = alibi.at(self.positions[: end - self.first])
            self._masks[key] = bias.to(dtype), ~self.visible[:, : end - self.first]
        return self._masks[key]


@dataclass(frozen=True)
class Span:
    """Rows a:b of a pass's hidden states: one sequence's new positions from `start`, attending through its
    own KV cache, multiplied by `mm` (a pass carries several sequences; each keeps its own results)."""

    a: int
    b: int
    cache: KVCache
    start: int
    mm: Matmul = DEFAULT
    tree: TreeRows | None = None
    decode_like: bool = False
    """Rows of a chain to verify: each attends exactly as decoding would (one row, keys up to its own)."""


def linear(x: Tensor, weight: Weight, bias: Tensor | None, spans: list[Span]) -> Tensor:
    """x @ weight.T + bias, each run of spans with the same Matmul multiplied together (decode-like rows as a
    decode pass multiplies them, prefill rows as a prefill does)."""
    groups: list[list[int | Matmul]] = []
    for s in spans:
        if groups and groups[-1][2] is s.mm:
            groups[-1][1] = s.b
        else:
            groups.append([s.a, s.b, s.mm])
    if len(groups) == 1:
        return spans[0].mm(x, weight, bias)
    return torch.cat([mm(x[a:b], weight, bias) for a, b, mm in groups])  # type: ignore[operator,misc]


def attend(qkv: Tensor, span: Span, alibi: Alibi, config: BloomConfig) -> Tensor:
    """Self-attention of one span's positions (qkv: (t, nh, 3, hd)); fills its cache. Returns (t, H).

    transformers' math (scores = q.k / sqrt(hd) + ALiBi, future keys masked, fp32 softmax, weighted values) in
    one fused op: torch's SDPA keeps scores in fp32 where transformers rounds them to the model's dtype, and on
    CPU it costs a fraction of baddbmm + softmax + bmm, whose bf16 kernels are rebuilt for each new key count
    (every decoded token): ~0.5 ms a block at bloom-560m's width. A chain's verify rows each attend as decoding
    would, so a verified draft token has the logprob decoding would have given it."""
    t = qkv.shape[0]
    nh, hd = config.n_head, config.head_dim
    start, cache, mm = span.start, span.cache, span.mm
    end = start + t
    cache.reserve(start, end)
    cache.k[:, start:end] = qkv[:, :, 1].transpose(0, 1)
    cache.v[:, start:end] = qkv[:, :, 2].transpose(0, 1)
    # Many rows on a CPU whose bf16 GEMM is slow: scores and context in fp32 too (see matmul.py).
    work = torch.float32 if mm.upcast and t > 1 else qkv.dtype
    q = qkv[:, :, 0].transpose(0, 1).to(work)  # (nh, T, hd)
    keys = cache.k[:, :end].to(work)[None]  # (1, nh, L, hd)
    values = cache.v[:, :end].to(work)[None]
    tree = span.tree
    if tree is not None:
        region = slice(tree.first, end)
        bias, hidden_slots = tree.masks(alibi, end, work)  # (nh, 1, L), (t, slots)
    else:
        bias = alibi.upto(end).to(work)  # (nh, 1, L)
    out = torch.empty((nh, t, hd), dtype=work)
    scale = 1.0 / math.sqrt(hd)
    if t > 1 and span.decode_like and tree is None:
        # SDPA's sums depend on how many queries and keys it takes: one call per row, as decoding makes it.
        for i in range(t):
            n = start + i + 1
            out[:, i] = F.scaled_dot_product_attention(
                q[None, :, i : i + 1], keys[:, :, :n], values[:, :, :n], attn_mask=bias[None, :, :, :n], scale=scale
            )[0, :, 0]
        return out.transpose(0, 1).reshape(t, nh * hd).to(qkv.dtype)
    chunk = max(1, SCORE_BYTES // (4 * nh * end))
    for q0 in range(0, t, chunk):
        q1 = min(t, q0 + chunk)
        if t == 1:
            mask = bias
        else:
            mask = bias.expand(nh, q1 - q0, end).clone()
            if tree is not None:
                # A tree node sees the text before the tree and its own ancestors, not its siblings' lines.
                mask[:, :, region].masked_fill_(hidden_slots[q0:q1], float("-inf"))
            else:
                # Query i (absolute position start+i) sees keys 0..start+i.
                query_pos = torch.arange(start + q0, start + q1)[:, None]
                mask.masked_fill_(torch.arange(end)[None, :] > query_pos, float("-inf"))
        out[:, q0:q1] = F.scaled_dot_product_attention(
            q[None, :, q0:q1], keys, values, attn_mask=mask[None], scale=scale
        )[0]
        mm.check()
    return out.transpose(0, 1).reshape(t, nh * hd).to(qkv.dtype)


def attention(x: Tensor, w: Weights, spans: list[Span], alibi: Alibi, config: BloomConfig) -> Tensor:
    """Self-attention of every span's new positions, each through its own cache. Returns (T, H), no bias add."""
    nh, hd = config.n_head, config.head_dim
    qkv = linear(x, w["self_attention.query_key_value.weight"], w["self_attention.query_key_value.bias"], spans)
    qkv = qkv.view(x.shape[0], nh, 3, hd)  # fused layout: per head, q then k then v
    if len(spans) == 1:
        ctx = attend(qkv, spans[0], alibi, config)
    else:
        ctx = torch.cat([attend(qkv[s.a : s.b], s, alibi, config) for s in spans])
    return linear(ctx, w["self_attention.dense.weight"], w["self_attention.dense.bias"], spans)


def block_spans(x: Tensor, w: Weights, spans: list[Span], alibi: Alibi, config: BloomConfig) -> Tensor:
    """One transformer block on hidden states x (T, H) holding the rows of `spans`, in order."""
    eps = config.layer_norm_epsilon
    post_ln = config.apply_residual_connection_post_layernorm
    ln1 = layer_norm(x, w["input_layernorm.weight"], w["input_layernorm.bias"], eps)
    h = attention(ln1, w, spans, alibi, config) + (ln1 if post_ln else x)
    ln2 = layer_norm(h, w["post_attention_layernorm.weight"], w["post_attention_layernorm.bias"], eps)
    up = gelu(linear(ln2, w["mlp.dense_h_to_4h.weight"], w["mlp.dense_h_to_4h.bias"], spans))
    return linear(up, w["mlp.dense_4h_to_h.weight"], w["mlp.dense_4h_to_h.bias"], spans) + (ln2 if post_ln else h)


def block_forward(
    x: Tensor, w: Weights, cache: KVCache, start: int, alibi: Alibi, config: BloomConfig, mm: Matmul = DEFAULT
) -> Tensor:
    """One transformer block on the hidden states x (T, H) of one sequence's positions from `start`."""
    return block_spans(x, w, [Span(0, x.shape[0], cache, start, mm)], alibi, config)
