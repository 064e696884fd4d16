"""The GRN prior inside the model: an edge list over the gene vocabulary, and the per-batch attention mask.

Shipped next to the weights for `trust_remote_code` loading, so it imports only torch.

Edges are stored as a `(2, num_edges)` int64 tensor of vocabulary ids, row 0 the regulator (TF), row 1 the
target. The mask rule is written once, as the predicate [`MaskRule.allows`]`(cell, query, key)` (the way
transformers' `masking_utils` composes one `mask_function`), and evaluated into every form a kernel takes: the
boolean `(batch, 1, L, L)` mask (every pair), the flex `BlockMask` (block by block) and the structured plan (its
candidate pairs: the prior's edges located in each cell, the self and `[CLS]` pair of every row, and the few rows
that may read any gene). The prior's links of a batch are looked up through a small table over the batch's own
genes and regulators, on the batch's device, with no Python loop over cells or genes and without ever
materialising a `vocab x vocab` matrix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch


def edge_keys(grn_edges: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Sorted unique int64 keys `regulator * vocab_size + target` of a `(2, E)` edge tensor."""
    keys = grn_edges[0].to(torch.int64) * vocab_size + grn_edges[1].to(torch.int64)
    return torch.unique(keys)  # unique() also sorts


def token_roles(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cls_token_id: int, special_token_ids: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(valid, is_cls, is_gene)`, each `(batch, L)` bool: real tokens, the real `[CLS]` token, real gene tokens."""
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_cls = (input_ids == cls_token_id) & valid
    is_gene = valid & ~torch.isin(input_ids, torch.tensor(special_token_ids, device=input_ids.device))
    return valid, is_cls, is_gene


def lookup_pairs(keys: torch.Tensor, query_ids: torch.Tensor, key_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`out[..., i, j]` is True where the edge `key_ids[..., j] -> query_ids[..., i]` is among `keys` (a plain
    lookup of pairs in the sorted edge keys, independent of the mask rule: tests hold the rule against it).

    `query_ids` and `key_ids` are `(batch, L)` vocabulary ids; the result is `(batch, L, L)` bool.
    """
    pair = key_ids.to(torch.int64)[:, None, :] * vocab_size + query_ids.to(torch.int64)[:, :, None]
    if keys.numel() == 0:
        return torch.zeros_like(pair, dtype=torch.bool)
    position = torch.searchsorted(keys, pair).clamp_(max=keys.numel() - 1)
    return keys[position] == pair


@dataclass
class MaskRule:
    """The attention rule of one batch, written once: `allows(b, q, k)` says whether query `q` of cell `b` may
    attend to key `k`. `b`, `q`, `k` are integer index tensors that broadcast together; the boolean mask evaluates
    the rule on every pair ([`build_attention_mask`]), the flex `BlockMask` block by block ([`build_block_mask`]),
    and the structured plan on its candidate pairs ([`build_structured_plan`]).

    Rules, in order: gene-gene pairs come from the prior (`link`, direction as configured, optional k-hop closure);
    genes with no partner fall back per `isolated_genes` (`isolated`); self loops; `[CLS]` rows and columns; padding
    keys are never visible to any query, and each padding query sees only itself in GRN blocks and every real token
    in dense ones (a key-padding mask, as in BERT), so no row is empty and nothing leaks.

    Fields:
        valid, is_cls, is_gene: `(batch, L)` bool token roles ([`token_roles`]).
        dense: every pair of real genes is allowed (the unconstrained Transformer); `link` is then unused.
        link: `(b, q, k) -> bool`, the prior links key gene `k` to query gene `q` (any pair; the rule keeps genes).
        isolated: `(batch, L)` bool, genes that attend to every gene of the cell (`isolated_genes="dense"`), or None.
        batch_edges: the batch's genes and the prior's edges among them ([`_batch_genes_and_edges`]), or None.
        grn_self_loops, cls_attends_all, all_attend_cls: see `ScGrnConfig`.
    """

    valid: torch.Tensor
    is_cls: torch.Tensor
    is_gene: torch.Tensor
    dense: bool
    link: Callable | None = None
    isolated: torch.Tensor | None = None
    batch_edges: tuple | None = None
    grn_self_loops: bool = True
    cls_attends_all: bool = True
    all_attend_cls: bool = True

    def allows(self, b, q, k):
        same = q == k
        gene_q, gene_k, cls_q, valid_k = self.is_gene[b, q], self.is_gene[b, k], self.is_cls[b, q], self.valid[b, k]
        genes = gene_q & gene_k
        if self.dense:
            allowed = genes
        else:
            allowed = self.link(b, q, k) & genes & ~same
            if self.isolated is not None:
                allowed = allowed | (self.isolated[b, q] & genes)
        if self.grn_self_loops or self.dense:
            allowed = allowed | (same & gene_q)
        allowed = allowed | (cls_q & (valid_k if self.cls_attends_all else same)) | (cls_q & same)
        if self.all_attend_cls or self.dense:
            allowed = allowed | (gene_q & self.is_cls[b, k])
        padding_row = valid_k if self.dense else same  # a padding query: every real token in dense blocks, else itself
        return (allowed & valid_k) | (padding_row & ~self.valid[b, q])

    def on_every_pair(self) -> torch.Tensor:
        """The rule on every pair: `(batch, L, L)` bool."""
        batch, length = self.valid.shape
        cells, positions = _grid(batch, length, self.valid.device)
        return self.allows(cells, positions[None, :, None], positions[None, None, :])


def _grid(batch: int, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(batch, device=device)[:, None, None], torch.arange(length, device=device)


def prior_link(input_ids: torch.Tensor, is_gene: torch.Tensor, batch_edges: tuple, grn_direction: str) -> Callable:
    """The prior's `link(b, q, k)` for a batch: each token's column among the batch's genes and, for regulators, its
    row among the batch's regulators index a `(regulators in batch + 1, genes in batch + 1)` boolean edge table (the
    extra row and column are all-False sinks for non-regulators and special tokens), so no L x L tensor is needed.
    `batch_edges` is [`_batch_genes_and_edges`] of the batch."""
    batch_genes, regulator, target = batch_edges
    batch_regulators = torch.unique(regulator)
    column = _rank_in(batch_genes, input_ids, is_gene)  # (batch, L), sink = len(batch_genes)
    row = _rank_in(batch_regulators, input_ids, is_gene)  # (batch, L), sink = len(batch_regulators)
    table = torch.zeros(batch_regulators.numel() + 1, batch_genes.numel() + 1, dtype=torch.bool,
                        device=input_ids.device)
    table[torch.searchsorted(batch_regulators, regulator), torch.searchsorted(batch_genes, target)] = True
    reads_regulators = grn_direction in ("regulator_to_target", "both")
    reads_targets = grn_direction in ("target_to_regulator", "both")

    def link(b, q, k):
        if reads_regulators and reads_targets:
            return table[row[b, k], column[b, q]] | table[row[b, q], column[b, k]]
        if reads_regulators:  # query = target, key = its regulator: edge k -> q
            return table[row[b, k], column[b, q]]
        return table[row[b, q], column[b, k]]  # query = regulator, key = its target: edge q -> k

    return link


def mask_rule(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    grn_edges: torch.Tensor | None,
    *,
    vocab_size: int,
    cls_token_id: int,
    special_token_ids: tuple[int, ...],
    dense: bool,
    grn_direction: str = "regulator_to_target",
    grn_self_loops: bool = True,
    cls_attends_all: bool = True,
    all_attend_cls: bool = True,
    isolated_genes: str = "self",
    grn_hops: int = 1,
    keys: torch.Tensor | None = None,
) -> MaskRule:
    """The [`MaskRule`] of a batch. Arguments as [`build_attention_mask`].

    With `grn_hops > 1` or `isolated_genes="dense"`, a row depends on the whole cell (paths through other genes, whether
    a gene has any partner), so the prior's links are evaluated on every gene pair first (O(L^2) memory) and the
    closure and the isolated genes are read from that; otherwise the rule needs no L x L tensor."""
    valid, is_cls, is_gene = token_roles(input_ids, attention_mask, cls_token_id, special_token_ids)
    rule = MaskRule(valid, is_cls, is_gene, dense, grn_self_loops=grn_self_loops, cls_attends_all=cls_attends_all,
                    all_attend_cls=all_attend_cls)
    if dense:
        return rule
    if keys is None:
        keys = edge_keys(grn_edges.to(input_ids.device), vocab_size)
    rule.batch_edges = _batch_genes_and_edges(input_ids, is_gene, keys, vocab_size)
    rule.link = prior_link(input_ids, is_gene, rule.batch_edges, grn_direction)
    if grn_hops == 1 and isolated_genes == "self":
        return rule
    cells, positions = _grid(*input_ids.shape, input_ids.device)
    q, k = positions[None, :, None], positions[None, None, :]
    gene_pairs = is_gene[cells, q] & is_gene[cells, k] & (q != k)
    partners = rule.link(cells, q, k) & gene_pairs
    if grn_hops > 1:
        step = partners.float()
        reach = step.clone()
        for _ in range(grn_hops - 1):
            reach = ((reach @ step + reach) > 0).float()
        partners = (reach > 0) & gene_pairs
    rule.link = lambda b, q, k: partners[b, q, k]
    if isolated_genes == "dense":
        rule.isolated = is_gene & ~partners.any(-1)
    return rule


def build_attention_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    grn_edges: torch.Tensor | None,
    **rules,
) -> torch.Tensor:
    """Boolean attention mask of a batch, `(batch, 1, L, L)`, True where query i may attend to key j: the
    [`MaskRule`] evaluated on every pair.

    Args:
        input_ids: `(batch, L)` vocabulary ids, `[CLS]` first, padding anywhere `attention_mask` is 0.
        attention_mask: `(batch, L)` 1 for real tokens, 0 for padding (None: no padding).
        grn_edges: `(2, E)` regulator -> target vocabulary ids (ignored when `dense`).
        rules: `vocab_size`, `cls_token_id`, `special_token_ids`, `dense` (allow every pair of real tokens: the
            unconstrained Transformer), `keys` (precomputed `edge_keys(grn_edges, vocab_size)`, to skip the sort),
            and the mask options of `ScGrnConfig` under its names (`MASK_RULE_FIELDS`: `grn_direction`,
            `grn_self_loops`, `cls_attends_all`, `all_attend_cls`, `isolated_genes`, `grn_hops`).
    """
    return mask_rule(input_ids, attention_mask, grn_edges, **rules).on_every_pair()[:, None]


def dense_attention_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    cls_token_id: int,
    special_token_ids: tuple[int, ...],
    cls_attends_all: bool = True,
    **rules,
) -> torch.Tensor | None:
    """The mask of a dense block (`build_attention_mask(..., dense=True)`) in its cheapest exact form for `sdpa`,
    `eager` and the `sdpa` fallback of `grn_structured`.

    Where `[CLS]` reads every token and every real token is `[CLS]` or a gene, whether a pair is allowed depends on
    the key alone: `None` when the batch has no padding (SDPA then runs its unmasked kernel, whose memory grows with
    L, not L^2, on CPU and GPU alike), else the `(batch, 1, 1, L)` key-padding mask. Otherwise (`cls_attends_all=False`,
    or other special tokens among the real ones) the full `(batch, 1, L, L)` boolean mask. `rules` are the remaining
    arguments of [`build_attention_mask`]."""
    valid, is_cls, is_gene = token_roles(input_ids, attention_mask, cls_token_id, special_token_ids)
    if cls_attends_all and bool((is_cls | is_gene | ~valid).all()):
        return None if bool(valid.all()) else valid[:, None, None, :]
    return build_attention_mask(
        input_ids, attention_mask, None, cls_token_id=cls_token_id, special_token_ids=special_token_ids, dense=True,
        cls_attends_all=cls_attends_all, **rules,
    )


@dataclass
class StructuredAttentionPlan:
    """What the prior-structured attention needs for one batch; exactly the mask of [`build_attention_mask`].

    Most rows of a GRN mask hold a handful of keys: a gene reads its regulators present in the cell, itself and
    `[CLS]`. For those "light" rows the self pair and the `[CLS]` pair have a fixed structure (the diagonal, one
    column per cell) and are given as flags; the prior's edges are a list of P allowed (query, key) pairs, about
    L x (regulators per gene) instead of L^2. The few rows that may reach any gene (`[CLS]` with `cls_attends_all`;
    regulators when information flows from targets to regulators) are "heavy" and kept as full boolean rows,
    `(batch, R, L)` with R <= regulators present + 1.

    Fields:
        pair_query, pair_key: `(P,)` int64 flat token indices (`cell * L + position`) of the prior-edge pairs of
            the light rows (never a self or `[CLS]` pair).
        self_allowed: `(batch, L)` bool, light rows that attend to themselves.
        cls_allowed: `(batch, L)` bool, light rows that attend to their cell's `[CLS]` (other than `[CLS]` itself).
        cls_position: `(batch,)` position of each cell's `[CLS]` (0 in a cell without one; no row reads it then).
        heavy_positions: `(batch, R)` positions of heavy rows (0 where `heavy_valid` is False).
        heavy_valid: `(batch, R)` bool.
        heavy_mask: `(batch, 1, R, L)` bool; the full mask row of each heavy query.
        length: L.
    """

    pair_query: torch.Tensor
    pair_key: torch.Tensor
    self_allowed: torch.Tensor
    cls_allowed: torch.Tensor
    cls_position: torch.Tensor
    heavy_positions: torch.Tensor
    heavy_valid: torch.Tensor
    heavy_mask: torch.Tensor
    length: int

    @property
    def scored_pairs(self) -> int:
        """How many (query, key) scores the attention computes for this plan."""
        return (self.pair_query.numel() + int(self.self_allowed.sum()) + int(self.cls_allowed.sum())
                + int(self.heavy_valid.sum()) * self.length)

    def to_dense_mask(self) -> torch.Tensor:
        """The `(batch, 1, L, L)` boolean mask this plan computes (for tests and inspection; O(L^2))."""
        batch, length = self.heavy_valid.shape[0], self.length
        device = self.pair_query.device
        dense = torch.zeros(batch * length * length, dtype=torch.bool, device=device)
        dense[self.pair_query * length + self.pair_key % length] = True
        dense = dense.view(batch, length, length)
        positions = torch.arange(length, device=device)
        dense |= torch.diag_embed(self.self_allowed)
        dense |= self.cls_allowed[:, :, None] & (positions[None, None, :] == self.cls_position[:, None, None])
        rows_b, rows_s = self.heavy_valid.nonzero(as_tuple=True)
        dense[rows_b, self.heavy_positions[rows_b, rows_s]] = self.heavy_mask[rows_b, 0, rows_s]
        return dense[:, None]


def _pad_positions(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of True entries of a `(batch, L)` bool tensor, left-aligned and padded: `(batch, K)` positions
    (0 in padding) and `(batch, K)` validity, K the largest count of any row (at least 1)."""
    counts = selected.sum(-1)
    width = max(int(counts.max()) if selected.numel() else 0, 1)
    order = torch.sort((~selected).to(torch.int8), dim=-1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=selected.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.zeros_like(order)), valid


def structured_plan_supported(grn_hops: int, isolated_genes: str, dense: bool) -> bool:
    """Whether [`build_structured_plan`] covers a mask configuration (k-hop closure and dense fallback rows for
    isolated genes can make most rows dense, so they use the boolean mask instead)."""
    return not dense and grn_hops == 1 and isolated_genes == "self"


def build_structured_plan(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    keys: torch.Tensor,
    regulators: torch.Tensor,
    vocab_size: int,
    cls_token_id: int,
    special_token_ids: tuple[int, ...],
    grn_direction: str = "regulator_to_target",
    grn_self_loops: bool = True,
    cls_attends_all: bool = True,
    all_attend_cls: bool = True,
) -> StructuredAttentionPlan:
    """The [`StructuredAttentionPlan`] of a batch; same arguments and rules as [`build_attention_mask`] with
    `grn_hops=1`, `isolated_genes="self"`. `keys` are `edge_keys(grn_edges, vocab_size)`, `regulators` the sorted
    unique regulator ids (`grn_edges[0]`).

    Edges are enumerated, not pairs of tokens: the prior's edges between genes of this batch are located in each
    cell through a `(batch, genes in batch)` position table, so the cost is O(batch x edges among the batch's
    genes + P), never O(L^2). A gene listed twice in one cell is not supported (tokenizers never produce it).
    """
    batch, length = input_ids.shape
    device = input_ids.device
    rule = mask_rule(input_ids, attention_mask, None, keys=keys, vocab_size=vocab_size, cls_token_id=cls_token_id,
                     special_token_ids=special_token_ids, dense=False, grn_direction=grn_direction,
                     grn_self_loops=grn_self_loops, cls_attends_all=cls_attends_all, all_attend_cls=all_attend_cls)
    is_cls, is_gene = rule.is_cls, rule.is_gene
    reads_regulators = grn_direction in ("regulator_to_target", "both")
    reads_targets = grn_direction in ("target_to_regulator", "both")
    positions = torch.arange(length, device=device)
    cells = torch.arange(batch, device=device)

    heavy = is_cls & cls_attends_all
    if reads_targets:
        heavy = heavy | (is_gene & torch.isin(input_ids, regulators))

    # candidate gene pairs: the prior's edges located in each cell through a (batch, genes in batch) position table
    batch_genes, regulator, target = rule.batch_edges
    table = torch.full((batch, batch_genes.numel() + 1), -1, dtype=torch.int64, device=device)
    compact = _rank_in(batch_genes, input_ids, is_gene)  # last column: a sink for special tokens and padding
    table.scatter_(1, compact, torch.where(is_gene, positions[None].expand(batch, length), -1))
    table[:, -1] = -1
    regulator_at = table[:, torch.searchsorted(batch_genes, regulator)]  # (batch, edges in batch)
    target_at = table[:, torch.searchsorted(batch_genes, target)]
    present = (regulator_at >= 0) & (target_at >= 0) & (regulator_at != target_at)
    edge_cell = cells[:, None].expand_as(present)[present]
    regulator_at, target_at = regulator_at[present], target_at[present]
    edge_query, edge_key = [], []
    if reads_regulators:  # query = target, key = its regulator
        edge_query.append(target_at)
        edge_key.append(regulator_at)
    if reads_targets:  # query = regulator, key = its target
        edge_query.append(regulator_at)
        edge_key.append(target_at)
    edge_cell = edge_cell.repeat(len(edge_query))
    edge_query, edge_key = torch.cat(edge_query), torch.cat(edge_key)
    flat = torch.unique((edge_cell * length + edge_query) * length + edge_key)  # an edge both ways counts once
    edge_query = torch.div(flat, length, rounding_mode="floor")  # flat: cell * L + position
    edge_key = flat % length  # position in the cell
    edge_cell = torch.div(edge_query, length, rounding_mode="floor")

    # light rows: the rule on the candidate pairs, and on the self and [CLS] pair of every row
    keep = ~heavy.flatten()[edge_query] & rule.allows(edge_cell, edge_query % length, edge_key)
    rows = cells[:, None]
    self_allowed = rule.allows(rows, positions[None], positions[None]) & ~heavy
    cls_position = torch.where(is_cls.any(-1), is_cls.to(torch.int8).argmax(-1), 0)[:, None]  # batch may exceed L
    cls_allowed = (rule.allows(rows, positions[None], cls_position) & is_cls.gather(1, cls_position)
                   & (positions[None] != cls_position) & ~heavy)
    # heavy rows: the rule on every key
    heavy_positions, heavy_valid = _pad_positions(heavy)
    heavy_mask = rule.allows(rows[:, :, None], heavy_positions[:, :, None], positions[None, None, :])
    return StructuredAttentionPlan(
        pair_query=edge_query[keep],
        pair_key=(edge_cell * length + edge_key)[keep],
        self_allowed=self_allowed,
        cls_allowed=cls_allowed,
        cls_position=cls_position[:, 0],
        heavy_positions=heavy_positions,
        heavy_valid=heavy_valid,
        heavy_mask=(heavy_mask & heavy_valid[:, :, None])[:, None],
        length=length,
    )


def regulators_first_order(
    input_ids: torch.Tensor, regulators: torch.Tensor, cls_token_id: int
) -> torch.Tensor:
    """`(batch, L)` token order that puts `[CLS]` first, then the cell's regulators, then every other token, each
    group in its original order.

    scgrn has no positional encodings, so reordering a cell's tokens changes nothing but the layout. With
    regulators first, a target's allowed keys (its regulators, itself, `[CLS]`) fall in the first few key blocks and
    its own diagonal block, which is what makes a flex-attention block mask sparse."""
    group = torch.where(torch.isin(input_ids, regulators), 1, 2)
    group = torch.where(input_ids == cls_token_id, 0, group)
    return torch.sort(group, dim=1, stable=True).indices


def build_block_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    grn_edges: torch.Tensor | None,
    *,
    block_size: int = 128,
    **rules,
):
    """The mask of [`build_attention_mask`] (same arguments and rules) as a flex-attention `BlockMask`, shape
    `(batch, 1, L, L)`, for `attn_implementation="flex_attention"`: its `mask_mod` is the batch's [`MaskRule`].

    No L x L tensor is kept, nor made while building: `create_block_mask` is compiled, so it evaluates the rule block
    by block. With `grn_hops > 1` or `isolated_genes="dense"`, whose rows depend on the whole cell, the rule reads links
    evaluated on every gene pair (exact, O(L^2) memory)."""
    rule = mask_rule(input_ids, attention_mask, grn_edges, **rules)
    batch, length = input_ids.shape

    def mask_mod(b, h, q, k):
        return rule.allows(b, q, k)

    return _compiled_create_block_mask()(mask_mod, batch, None, length, length, device=input_ids.device,
                                         BLOCK_SIZE=block_size)


@functools.cache
def _compiled_create_block_mask():
    """torch's `create_block_mask`, compiled: it then evaluates `mask_mod` block by block instead of over every
    pair at once (measured on CPU at 32,768 genes: 1.4 s and no extra memory, against 21 s and 10 GiB eager)."""
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


def _batch_genes_and_edges(input_ids: torch.Tensor, is_gene: torch.Tensor, keys: torch.Tensor, vocab_size: int):
    """`(batch_genes, regulator, target)`: the sorted unique gene ids of the batch, and the prior's edges (from the
    sorted `edge_keys`) whose two genes both occur in the batch."""
    batch_genes = torch.unique(input_ids[is_gene])
    regulator, target = torch.div(keys, vocab_size, rounding_mode="floor"), keys % vocab_size
    in_batch = torch.isin(regulator, batch_genes) & torch.isin(target, batch_genes)
    return batch_genes, regulator[in_batch], target[in_batch]


def _rank_in(sorted_ids: torch.Tensor, input_ids: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """Index of each token's id in `sorted_ids` where `eligible` and present, else `len(sorted_ids)` (a sink)."""
    size = sorted_ids.numel()
    if size == 0:
        return torch.zeros_like(input_ids)
    rank = torch.searchsorted(sorted_ids, input_ids.contiguous()).clamp_(max=size - 1)
    found = eligible & (sorted_ids[rank] == input_ids)
    return torch.where(found, rank, torch.full_like(rank, size))


def block_mask_to_dense(block_mask) -> torch.Tensor:
    """The exact `(batch, 1, L, L)` boolean mask a `BlockMask` from [`build_block_mask`] applies (its `mask_mod`
    evaluated on every pair; for tests and inspection, O(L^2))."""
    batch, _, length, _ = block_mask.shape
    device = block_mask.kv_num_blocks.device
    cells = torch.arange(batch, device=device)[:, None, None]
    positions = torch.arange(length, device=device)
    return block_mask.mask_mod(cells, 0, positions[None, :, None], positions[None, None, :])[:, None]


# ------------------------------------------------------------------------------------------ mask forms by kernel
# rules: the `build_attention_mask` keywords (vocab_size, cls_token_id, special_token_ids, grn_self_loops,
# cls_attends_all, all_attend_cls, grn_direction, isolated_genes, grn_hops) from `ScGrnModel.mask_rules()`.


def _boolean_grn(input_ids, attention_mask, edges, keys, rules):
    return build_attention_mask(input_ids, attention_mask, edges, dense=False, keys=keys, **rules)


def _boolean_dense(input_ids, attention_mask, rules):
    return build_attention_mask(input_ids, attention_mask, None, dense=True, **rules)


def _cheapest_dense(input_ids, attention_mask, rules):
    return dense_attention_mask(input_ids, attention_mask, **rules)


def _structured_grn(input_ids, attention_mask, edges, keys, rules):
    if not structured_plan_supported(rules["grn_hops"], rules["isolated_genes"], False):
        return _boolean_grn(input_ids, attention_mask, edges, keys, rules)
    plan_rules = {k: v for k, v in rules.items() if k not in ("grn_hops", "isolated_genes")}
    return build_structured_plan(input_ids, attention_mask, keys=keys, regulators=torch.unique(edges[0]), **plan_rules)


def _flex_grn(input_ids, attention_mask, edges, keys, rules):
    return build_block_mask(input_ids, attention_mask, edges, dense=False, keys=keys, **rules)


def _flex_dense(input_ids, attention_mask, rules):
    return build_block_mask(input_ids, attention_mask, None, dense=True, **rules)


@dataclass(frozen=True)
class MaskForm:
    """What one attention implementation receives as its mask: `grn(input_ids, attention_mask, edges, keys, rules)`
    for blocks that follow the prior, `dense(input_ids, attention_mask, rules)` for unconstrained blocks, and
    whether the model puts regulators first (`reorders_tokens`) so that the mask's blocks are sparse."""

    grn: Callable
    dense: Callable
    reorders_tokens: bool = False


# The boolean `(batch, 1, L, L)` masks of every block (reported masks, interpretation, the eager reference).
BOOLEAN_MASKS = MaskForm(_boolean_grn, _boolean_dense)
# Each kernel's own form; any kernel not listed (sdpa, eager, other registered functions) takes boolean GRN masks
# and the cheapest exact dense mask (`dense_attention_mask`).
MASK_FORMS = {
    "grn_structured": MaskForm(_structured_grn, _cheapest_dense),
    # transformers' flex function would add a boolean tensor to the scores, so flex blocks all get BlockMasks
    "flex_attention": MaskForm(_flex_grn, _flex_dense, reorders_tokens=True),
}
DEFAULT_MASK_FORM = MaskForm(_boolean_grn, _cheapest_dense)


def mask_form(attn_implementation: str) -> MaskForm:
    """The [`MaskForm`] of an attention implementation (`DEFAULT_MASK_FORM` when it has none of its own)."""
    return MASK_FORMS.get(attn_implementation, DEFAULT_MASK_FORM)
