"""The GRN prior inside the model: an edge list over the gene vocabulary, and the per-batch attention mask.

Shipped next to the weights for `trust_remote_code` loading, so it imports only torch and numpy.

Edges are stored as a `(2, num_edges)` int64 tensor of vocabulary ids, row 0 the regulator (TF), row 1 the
target. The mask of a batch is built by looking every ordered gene pair of each cell up in the sorted edge keys
(`regulator_id * vocab_size + target_id`), on the batch's device, with no Python loop over cells or genes and
without ever materialising a `vocab x vocab` matrix.
"""

from __future__ import annotations

import numpy as np
import torch


def edge_keys(grn_edges: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Sorted unique int64 keys `regulator * vocab_size + target` of a `(2, E)` edge tensor."""
    keys = grn_edges[0].to(torch.int64) * vocab_size + grn_edges[1].to(torch.int64)
    return torch.unique(keys)  # unique() also sorts


def lookup_pairs(keys: torch.Tensor, query_ids: torch.Tensor, key_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`out[..., i, j]` is True where the edge `key_ids[..., j] -> query_ids[..., i]` is among `keys`.

    `query_ids` and `key_ids` are `(batch, L)` vocabulary ids; the result is `(batch, L, L)` bool.
    """
    pair = key_ids.to(torch.int64)[:, None, :] * vocab_size + query_ids.to(torch.int64)[:, :, None]
    if keys.numel() == 0:
        return torch.zeros_like(pair, dtype=torch.bool)
    position = torch.searchsorted(keys, pair).clamp_(max=keys.numel() - 1)
    return keys[position] == pair


def build_attention_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    grn_edges: torch.Tensor | None,
    *,
    vocab_size: int,
    cls_token_id: int,
    special_token_ids: tuple[int, ...],
    dense: bool,
    direction: str = "regulator_to_target",
    self_loops: bool = True,
    cls_attends_all: bool = True,
    all_attend_cls: bool = True,
    isolated_genes: str = "self",
    hops: int = 1,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean attention mask of a batch, `(batch, 1, L, L)`, True where query i may attend to key j.

    Args:
        input_ids: `(batch, L)` vocabulary ids, `[CLS]` first, padding anywhere `attention_mask` is 0.
        attention_mask: `(batch, L)` 1 for real tokens, 0 for padding (None: no padding).
        grn_edges: `(2, E)` regulator -> target vocabulary ids (ignored when `dense`).
        dense: allow every pair of real tokens (the unconstrained Transformer).
        keys: precomputed `edge_keys(grn_edges, vocab_size)`, to skip the sort.
        Other arguments: see `ScGrnConfig`.

    Rules, in order: gene-gene pairs come from the prior (direction as configured, optional k-hop closure);
    genes with no partner fall back per `isolated_genes`; self loops; `[CLS]` rows and columns; padding keys are
    never visible to any query, and each padding query sees only itself (so no row is empty and nothing leaks).
    """
    batch, length = input_ids.shape
    device = input_ids.device
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    is_cls = (input_ids == cls_token_id) & valid
    is_gene = valid & ~torch.isin(input_ids, torch.tensor(special_token_ids, device=device))
    eye = torch.eye(length, dtype=torch.bool, device=device)[None]
    gene_pair = is_gene[:, :, None] & is_gene[:, None, :]

    if dense:
        allowed = gene_pair.clone()
    else:
        if keys is None:
            keys = edge_keys(grn_edges.to(device), vocab_size)
        reads_regulators = direction in ("regulator_to_target", "both")
        reads_targets = direction in ("target_to_regulator", "both")
        allowed = torch.zeros_like(gene_pair)
        if reads_regulators:  # query i is the target, key j its regulator: edge j -> i
            allowed |= lookup_pairs(keys, input_ids, input_ids, vocab_size)
        if reads_targets:  # query i is the regulator, key j its target: edge i -> j
            allowed |= lookup_pairs(keys, input_ids, input_ids, vocab_size).transpose(1, 2)
        allowed &= gene_pair & ~eye
        if hops > 1:
            step = allowed.float()
            reach = step.clone()
            for _ in range(hops - 1):
                reach = ((reach @ step + reach) > 0).float()
            allowed = (reach > 0) & gene_pair & ~eye
        if isolated_genes == "dense":
            isolated = is_gene & ~allowed.any(-1)
            allowed |= isolated[:, :, None] & gene_pair

    if self_loops or dense:
        allowed |= eye & is_gene[:, :, None]
    cls_row = valid[:, None, :] if cls_attends_all else eye
    allowed |= is_cls[:, :, None] & cls_row
    allowed |= is_cls[:, :, None] & eye
    if all_attend_cls or dense:
        allowed |= is_gene[:, :, None] & is_cls[:, None, :]
    allowed &= valid[:, None, :]
    allowed |= eye & ~valid[:, :, None]
    return allowed[:, None]


def random_control_edges(grn_edges: torch.Tensor, panel_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """Uniform random directed edges among `panel_ids`, as many as `grn_edges` has distinct non-self edges.

    No self edges and no duplicates, so the control has exactly the prior's density on the same panel.
    Deterministic for a given seed.
    """
    prior = _distinct_non_self(grn_edges)
    num_edges = prior.shape[1]
    panel = np.unique(panel_ids.cpu().numpy().astype(np.int64))
    n = panel.size
    if num_edges > n * (n - 1):
        raise ValueError(f"cannot place {num_edges} distinct edges among {n} genes for a random control.")
    rng = np.random.default_rng(seed)
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < num_edges:
        need = num_edges - chosen.size
        src = rng.integers(0, n, size=2 * need + 16)
        dst = rng.integers(0, n, size=2 * need + 16)
        draw = src * n + dst
        draw = draw[src != dst]
        merged = np.concatenate([chosen, draw])
        _, first = np.unique(merged, return_index=True)
        chosen = merged[np.sort(first)][:num_edges]  # keep draw order: seeded and stable
    src, dst = np.divmod(chosen, n)
    return torch.from_numpy(np.stack([panel[src], panel[dst]]))


def shuffled_control_edges(grn_edges: torch.Tensor, seed: int, max_rounds: int = 1000) -> torch.Tensor:
    """Degree-preserving rewiring of the prior: every regulator keeps its out-degree, every target its in-degree.

    Targets are permuted across edges, then edges that became self loops or duplicates swap targets with random
    other edges until none is left (each swap keeps all degrees). Deterministic for a given seed.
    """
    prior = _distinct_non_self(grn_edges).numpy()
    src, dst = prior[0].copy(), prior[1].copy()
    num_edges = src.size
    if num_edges < 2:
        return torch.from_numpy(np.stack([src, dst]))
    rng = np.random.default_rng(seed)
    dst = dst[rng.permutation(num_edges)]
    scale = int(max(src.max(), dst.max())) + 1
    for _ in range(max_rounds):
        bad = _conflicting_edges(src, dst, scale)
        if bad.size == 0:
            return torch.from_numpy(np.stack([src, dst]))
        partners = rng.integers(0, num_edges, size=bad.size)
        for edge, partner in zip(bad.tolist(), partners.tolist()):
            dst[edge], dst[partner] = dst[partner], dst[edge]
    raise ValueError(
        f"degree-preserving shuffle did not converge in {max_rounds} rounds: the prior is too dense to rewire "
        "without self loops or duplicate edges; use grn_mode='random' instead."
    )


def _conflicting_edges(src: np.ndarray, dst: np.ndarray, scale: int) -> np.ndarray:
    keys = src.astype(np.int64) * scale + dst
    _, first = np.unique(keys, return_index=True)
    duplicate = np.ones(keys.size, dtype=bool)
    duplicate[first] = False
    return np.flatnonzero(duplicate | (src == dst))


def _distinct_non_self(grn_edges: torch.Tensor) -> torch.Tensor:
    edges = grn_edges.detach().cpu().to(torch.int64)
    edges = edges[:, edges[0] != edges[1]]
    return torch.unique(edges, dim=1)


def control_edges(grn_edges: torch.Tensor, mode: str, panel_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """The edges a model of `grn_mode=mode` uses: the prior itself, or its sparsity-matched control."""
    if mode == "random":
        return random_control_edges(grn_edges, panel_ids, seed)
    if mode == "shuffled":
        return shuffled_control_edges(grn_edges, seed)
    return _distinct_non_self(grn_edges)
