"""Attention functions and hand-written autograd kernels of the scgrn encoder: the eager reference, the exact
prior-structured attention (registered in transformers' attention registry as `"grn_structured"`), the default
`"grn_auto"` that runs the kernel chosen for the device of its inputs (`DEVICE_ATTENTION`), and the SwiGLU
feed-forward that keeps less for its backward pass.

Shipped next to the weights for `trust_remote_code` loading: it imports only torch, transformers and its sibling
files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.autograd.function import once_differentiable
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from .masks import StructuredAttentionPlan


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention. `attention_mask` is boolean `(batch, 1, L, L)`, True = may attend; masked pairs get
    exactly zero probability. Returns `(batch, L, heads, head_dim)` and the `(batch, heads, L, L)` probabilities."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if attention_mask is not None:
        probs = probs.masked_fill(~attention_mask, 0.0)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Softmax over the last dim restricted to `mask`; rows with nothing allowed get all zeros (as in eager)."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(dtype)
    return probs.masked_fill(~mask, 0.0)


def _structured_attention(query, key, value, pair_query, pair_key, self_allowed, cls_allowed, cls_position,
                          scaling: float, dropout: float) -> tuple[torch.Tensor, tuple, tuple]:
    """`_StructuredAttention`'s forward pass in plain differentiable torch ops: the output, the three probability
    tensors (self, `[CLS]`, pairs) and the dropout keep-masks (empty without dropout). Run directly where
    forward-mode AD carries tangents (the autograd Function defines no `jvp`)."""
    batch, length, heads, head_dim = query.shape
    tokens = batch * length
    accumulate = torch.promote_types(query.dtype, torch.float32)  # softmax in float32 at least
    cells = torch.arange(batch, device=query.device)
    key_cls, value_cls = key[cells, cls_position], value[cells, cls_position]  # (batch, heads, head_dim)
    flat_query, flat_key, flat_value = (t.view(tokens, heads, head_dim) for t in (query, key, value))
    score_self = ((query * key).sum(-1).to(accumulate) * scaling).masked_fill(~self_allowed[..., None], -torch.inf)
    score_cls = ((query * key_cls[:, None]).sum(-1).to(accumulate) * scaling).masked_fill(
        ~cls_allowed[..., None], -torch.inf)
    score_pair = (flat_query.index_select(0, pair_query) * flat_key.index_select(0, pair_key)).sum(-1).to(
        accumulate) * scaling  # (pairs, heads)
    # the softmax shift: any constant per row gives the same probabilities, so it carries no tangent
    shift = torch.maximum(score_self, score_cls).detach().view(tokens, heads)
    shift = shift.scatter_reduce(0, pair_query[:, None].expand_as(score_pair), score_pair.detach(), "amax")
    shift = torch.where(torch.isinf(shift), torch.zeros_like(shift), shift)  # rows with nothing allowed
    cell_shift = shift.view(batch, length, heads)
    weight_self, weight_cls = torch.exp(score_self - cell_shift), torch.exp(score_cls - cell_shift)
    weight_pair = torch.exp(score_pair - shift.index_select(0, pair_query))
    total = (weight_self + weight_cls).view(tokens, heads).index_add(0, pair_query, weight_pair)
    total = torch.where(total > 0, total, torch.ones_like(total))
    probs = (weight_self / total.view(batch, length, heads), weight_cls / total.view(batch, length, heads),
             weight_pair / total.index_select(0, pair_query))
    keeps = tuple(torch.rand_like(p) >= dropout for p in probs) if dropout > 0 else ()
    used_self, used_cls, used_pair = _dropped(probs, keeps, dropout, query.dtype)
    output = used_self[..., None] * value + used_cls[..., None] * value_cls[:, None]
    output.view(tokens, heads, head_dim).index_add_(
        0, pair_query, used_pair[..., None] * flat_value.index_select(0, pair_key))
    return output, probs, keeps


class _StructuredAttention(torch.autograd.Function):
    """Exact softmax attention over three kinds of allowed keys of `(batch, L, heads, head_dim)` states: each token
    itself (where `self_allowed`), its cell's `[CLS]` (where `cls_allowed`), and an explicit list of (query, key)
    pairs (the prior's edges; flat `cell * L + position` indices).

    Self and `[CLS]` scores are elementwise products over all tokens (no gather); only the edge pairs are gathered.
    The backward pass keeps the `(tokens or pairs, heads)` probabilities, not `head_dim`-sized states. A row with
    nothing allowed gives zeros (as eager does with exact-zero probabilities)."""

    @staticmethod
    def forward(ctx, query, key, value, pair_query, pair_key, self_allowed, cls_allowed, cls_position,
                scaling: float, dropout: float):
        output, probs, keeps = _structured_attention(query, key, value, pair_query, pair_key, self_allowed,
                                                     cls_allowed, cls_position, scaling, dropout)
        ctx.save_for_backward(query, key, value, pair_query, pair_key, cls_position, *probs, *keeps)
        ctx.scaling, ctx.dropout = scaling, dropout
        return output

    @staticmethod
    @once_differentiable  # a second derivative would miss the saved intermediates: raise, not guess
    def backward(ctx, grad_output):
        query, key, value, pair_query, pair_key, cls_position, *saved = ctx.saved_tensors
        probs, keeps = tuple(saved[:3]), tuple(saved[3:])
        prob_self, prob_cls, prob_pair = probs
        batch, length, heads, head_dim = query.shape
        tokens = batch * length
        cells = torch.arange(batch, device=query.device)
        key_cls, value_cls = key[cells, cls_position], value[cells, cls_position]
        flat_query, flat_key, flat_value = (t.view(tokens, heads, head_dim) for t in (query, key, value))
        grad = grad_output.contiguous()
        grad_rows = grad.view(tokens, heads, head_dim).index_select(0, pair_query)  # (pairs, heads, head_dim)
        used_self, used_cls, used_pair = _dropped(probs, keeps, ctx.dropout, query.dtype)
        grad_value = used_self[..., None] * grad
        grad_value[cells, cls_position] += (used_cls[..., None] * grad).sum(1)
        grad_value.view(tokens, heads, head_dim).index_add_(0, pair_key, used_pair[..., None] * grad_rows)
        grad_probs = ((grad * value).sum(-1), (grad * value_cls[:, None]).sum(-1),
                      (grad_rows * flat_value.index_select(0, pair_key)).sum(-1))
        del grad_rows
        grad_self, grad_cls, grad_pair = _dropped(grad_probs, keeps, ctx.dropout, prob_self.dtype)
        row = (prob_self * grad_self + prob_cls * grad_cls).view(tokens, heads).index_add(
            0, pair_query, prob_pair * grad_pair)
        cell_row = row.view(batch, length, heads)
        scale = ctx.scaling
        grad_score_self = (prob_self * (grad_self - cell_row) * scale).to(query.dtype)
        grad_score_cls = (prob_cls * (grad_cls - cell_row) * scale).to(query.dtype)
        grad_score_pair = (prob_pair * (grad_pair - row.index_select(0, pair_query)) * scale).to(query.dtype)
        grad_query = grad_score_self[..., None] * key + grad_score_cls[..., None] * key_cls[:, None]
        grad_query.view(tokens, heads, head_dim).index_add_(
            0, pair_query, grad_score_pair[..., None] * flat_key.index_select(0, pair_key))
        grad_key = grad_score_self[..., None] * query
        grad_key[cells, cls_position] += (grad_score_cls[..., None] * query).sum(1)
        grad_key.view(tokens, heads, head_dim).index_add_(
            0, pair_key, grad_score_pair[..., None] * flat_query.index_select(0, pair_query))
        return grad_query, grad_key, grad_value, None, None, None, None, None, None, None


def _dropped(values: tuple, keeps: tuple, dropout: float, dtype: torch.dtype) -> tuple:
    """`values` with attention dropout applied (`keeps` are the kept-entry masks; empty without dropout)."""
    if keeps:
        values = tuple(v * k / (1 - dropout) for v, k in zip(values, keeps))
    return tuple(v.to(dtype) for v in values)


def grn_structured_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: "StructuredAttentionPlan | torch.Tensor | None",
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Exact GRN-masked attention whose cost grows with the allowed pairs (about L x (regulators per gene + 2)) plus
    a few full rows, not with L^2.

    `attention_mask` is a [`StructuredAttentionPlan`] (built by `ScGrnModel` when this implementation is selected):
    every query scores only its allowed keys (its regulators present in the cell, itself and `[CLS]`), listed as
    pairs; the few rows that may reach any gene (`[CLS]`, and regulators when information flows from targets) are
    computed as full rows. Gives the
    same result as `eager` with the equivalent boolean mask. A boolean tensor mask (dense layers, or mask options
    the plan does not cover) goes to `sdpa`. Under forward-mode AD it runs the same computation in plain torch ops
    (and `eager` for `sdpa`). Registered as `attn_implementation="grn_structured"`.
    """
    tangents = any(_carries_tangent(t) for t in (query, key, value))
    if not _is_structured_plan(attention_mask):
        dense = eager_attention_forward if tangents else ALL_ATTENTION_FUNCTIONS["sdpa"]
        return dense(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)[0], None
    plan = attention_mask
    batch, heads, length, head_dim = query.shape
    training = module.training and dropout > 0
    # (batch, L, heads, head_dim) token-major states; every allowed score is computed once, nothing else is
    token_query, token_key, token_value = (t.transpose(1, 2).contiguous() for t in (query, key, value))
    arguments = (token_query, token_key, token_value, plan.pair_query, plan.pair_key, plan.self_allowed,
                 plan.cls_allowed, plan.cls_position, scaling, dropout if training else 0.0)
    output = _structured_attention(*arguments)[0] if tangents else _StructuredAttention.apply(*arguments)
    if plan.heavy_valid.any():
        index = plan.heavy_positions[:, None, :, None].expand(batch, heads, plan.heavy_positions.shape[1], head_dim)
        heavy_queries = torch.gather(query, 2, index)
        heavy_scores = torch.matmul(heavy_queries, key.transpose(2, 3)) * scaling
        heavy_probs = _masked_softmax(heavy_scores, plan.heavy_mask, query.dtype)
        if training:
            heavy_probs = nn.functional.dropout(heavy_probs, p=dropout, training=True)
        heavy_output = torch.matmul(heavy_probs, value)  # (batch, heads, R, head_dim)
        rows_b, rows_s = plan.heavy_valid.nonzero(as_tuple=True)
        output = output.index_put(
            (rows_b, plan.heavy_positions[rows_b, rows_s]), heavy_output.transpose(1, 2)[rows_b, rows_s]
        )
    return output, None


def _carries_tangent(tensor: torch.Tensor) -> bool:
    """Whether forward-mode AD carries a tangent through `tensor`: then the kernels run on plain torch ops, since
    `_StructuredAttention` has no `jvp` and torch 2.13's sdpa no forward-mode formula (eager replaces it)."""
    return forward_ad.unpack_dual(tensor).tangent is not None


def _is_structured_plan(mask) -> bool:
    """Whether an attention mask is a structured plan, recognised by its fields rather than its class: two scgrn
    repos loaded with `trust_remote_code` in one process each define their own `StructuredAttentionPlan`, and the
    registry keeps only the kernel registered last, which must still take the other copy's plans."""
    return not isinstance(mask, torch.Tensor) and all(
        hasattr(mask, name) for name in ("pair_query", "pair_key", "self_allowed", "heavy_mask"))


class _SwiGLU(torch.autograd.Function):
    """`down(silu(gate(x)) * up(x))` for bias-free projections, keeping only `x`, `gate(x)` and `up(x)` for the
    backward pass: `silu(gate(x))` and the product, two `(tokens, intermediate)` tensors that autograd would also
    keep, are recomputed elementwise (no matmul is recomputed). Under autocast the matmuls run in the autocast
    dtype, as `nn.Linear` would, and each gradient comes back in its input's dtype."""

    @staticmethod
    def forward(ctx, hidden_states, gate_weight, up_weight, down_weight):
        device = hidden_states.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden_states.dtype
        with torch.autocast(device, enabled=False):
            states = hidden_states.to(dtype)
            gate = nn.functional.linear(states, gate_weight.to(dtype))
            up = nn.functional.linear(states, up_weight.to(dtype))
            output = nn.functional.linear(nn.functional.silu(gate) * up, down_weight.to(dtype))
        ctx.save_for_backward(states, gate, up, gate_weight, up_weight, down_weight)
        ctx.input_dtype = hidden_states.dtype
        return output

    @staticmethod
    @once_differentiable  # a second derivative would miss the saved intermediates: raise, not guess
    def backward(ctx, grad_output):
        states, gate, up, gate_weight, up_weight, down_weight = ctx.saved_tensors
        needs_states, needs_gate, needs_up, needs_down = ctx.needs_input_grad
        dtype = gate.dtype
        grad = grad_output.to(dtype)
        activated = nn.functional.silu(gate)
        grad_product = grad @ down_weight.to(dtype)
        grad_gate = torch.ops.aten.silu_backward(grad_product * up, gate)
        grad_up = grad_product * activated
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  (tokens, features)
        grad_states = grad_gate_weight = grad_up_weight = grad_down_weight = None
        if needs_down:
            grad_down_weight = (flat(grad).T @ flat(activated * up)).to(down_weight.dtype)
        if needs_gate:
            grad_gate_weight = (flat(grad_gate).T @ flat(states)).to(gate_weight.dtype)
        if needs_up:
            grad_up_weight = (flat(grad_up).T @ flat(states)).to(up_weight.dtype)
        if needs_states:
            grad_states = (grad_gate @ gate_weight.to(dtype) + grad_up @ up_weight.to(dtype)).to(ctx.input_dtype)
        return grad_states, grad_gate_weight, grad_up_weight, grad_down_weight


def is_plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` without bias, subclass or hooks, whose forward is exactly `F.linear(x, weight)`."""
    return (
        type(module) is nn.Linear
        and module.bias is None
        and not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)
        and "forward" not in module.__dict__
    )


def flex_compile_scope(attn_implementation: str, device: torch.device):
    """On CPU, compiled flex attention must not switch to dynamic shapes: torch 2.13's inductor emits C++ that does
    not compile for a CPU flex kernel whose `mask_mod` reads per-token tensors under dynamic shapes. Each new cell
    length then compiles once, statically. Elsewhere (and for other implementations) nothing changes."""
    if attn_implementation == "flex_attention" and device.type == "cpu":
        return torch._dynamo.config.patch(automatic_dynamic_shapes=False)
    return contextlib.nullcontext()


AUTO_ATTENTION = "grn_auto"
# The kernel the default `attn_implementation="grn_auto"` runs on each device type, chosen from measurements
# (benchmarks/README.md, "The default attention on each device"). CPU: `grn_structured` trains 3-8x faster than
# the dense model at 2,048-8,192 genes and flex has no backward. CUDA: no GPU timing yet; on the same real cells
# `grn_structured` scores 0.01-0.16% of the L^2 pairs where flex computes 4-18% of the 128 x 128 blocks, and it
# builds its mask in ~10 ms where flex's compiled BlockMask build takes 0.08-1.4 s per 32,768-token batch
# (2,048-32,768 genes). `benchmarks/gpu_suite.py` prints the fastest exact kernel it measures beside this table.
DEVICE_ATTENTION = {"cpu": "grn_structured", "cuda": "grn_structured"}
FALLBACK_ATTENTION = "grn_structured"  # plain torch ops: exact on any device type not in the table
FORWARD_AD_ATTENTION = ("eager", "grn_structured")  # the kernels that carry forward-mode AD tangents


def attention_on(attn_implementation: str, device: torch.device | str) -> str:
    """The kernel an `attn_implementation` runs on `device`: `DEVICE_ATTENTION`'s entry for the device's type (else
    `FALLBACK_ATTENTION`) for `"grn_auto"`, and the implementation itself for any other name."""
    if attn_implementation != AUTO_ATTENTION:
        return attn_implementation
    return DEVICE_ATTENTION.get(torch.device(device).type, FALLBACK_ATTENTION)


def auto_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask, **kwargs):
    """`attn_implementation="grn_auto"`: the registered kernel of [`attention_on`] for the inputs' device (the
    model builds the mask in that kernel's form, from the same choice)."""
    kernel = attention_function(attention_on(AUTO_ATTENTION, query.device))
    return kernel(module, query, key, value, attention_mask, **kwargs)


# scgrn's own kernels, called from this module whatever the registry holds: transformers' registry is one per
# process, so the scgrn repo loaded last would otherwise run its kernels for every scgrn model (of any version)
OWN_KERNELS = {"eager": eager_attention_forward, "grn_structured": grn_structured_attention_forward,
               AUTO_ATTENTION: auto_attention_forward}


def attention_function(attn_implementation: str) -> Callable:
    """The function an `attn_implementation` runs: scgrn's own (`OWN_KERNELS`) for its names, transformers'
    registry (sdpa, flex_attention, a user's registered kernel) for the others."""
    own = OWN_KERNELS.get(attn_implementation)
    return own if own is not None else ALL_ATTENTION_FUNCTIONS.get_interface(attn_implementation,
                                                                             eager_attention_forward)


# registered too, so that transformers accepts the names (attn_implementation="grn_structured", set_attn_...)
AttentionInterface.register("grn_structured", grn_structured_attention_forward)
AttentionInterface.register(AUTO_ATTENTION, auto_attention_forward)
