"""The controls a model can run instead of its prior (`grn_mode` "random", "shuffled", "rewired"): edge sets with
the prior's density or degrees but not its edges, seeded by `grn_control_seed`.

Shipped next to the weights for `trust_remote_code` loading (`ScGrnModel.set_grn_edges` stores the control it uses),
so it imports only torch and numpy.
"""

from __future__ import annotations

import numpy as np
import torch


def not_gene_pairs(edges: torch.Tensor, special_ids, vocab_size: int) -> torch.Tensor:
    """Per edge of `(2, E)` vocabulary ids: True where either end is a special token or outside `[0, vocab_size)`.
    The one rule that attaching a prior and checking a loaded one both apply."""
    special = torch.tensor(list(special_ids), device=edges.device)
    return (torch.isin(edges, special) | (edges < 0) | (edges >= vocab_size)).any(0)


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


def shuffled_control_edges(grn_edges: torch.Tensor, seed: int, max_rounds: int = 1000,
                           avoid_prior: bool = False) -> torch.Tensor:
    """Degree-preserving rewiring of the prior: every regulator keeps its out-degree, every target its in-degree.

    Targets are permuted across edges, then edges that became self loops or duplicates swap targets with random
    other edges until none is left (each swap keeps all degrees). With `avoid_prior`, none of the prior's own edges
    is left either ([`rewired_control_edges`]). Deterministic for a given seed.
    """
    prior = _distinct_non_self(grn_edges).numpy()
    if avoid_prior:
        return rewired_control_edges(prior, seed, max_rounds)
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


def rewired_control_edges(prior: np.ndarray, seed: int, max_rounds: int = 1000, tries: int = 64) -> torch.Tensor:
    """Degree-preserving rewiring of `(2, E)` distinct non-self edges with none of them left: starting from the prior,
    each remaining real edge `a -> b` swaps targets with a random edge `c -> d` when `a -> d` and `c -> b` are
    neither self loops, nor present, nor real. Every accepted swap keeps all degrees and removes one or two real
    edges; the walk never leaves the valid edge sets. Deterministic for a given seed."""
    src, dst = prior[0].astype(np.int64).copy(), prior[1].astype(np.int64).copy()
    if src.size < 2:
        raise ValueError("a prior of fewer than 2 edges cannot be rewired; use grn_mode='random'.")
    rng = np.random.default_rng(seed)
    scale = int(max(src.max(), dst.max())) + 1
    real = set((src * scale + dst).tolist())
    present = set(real)
    for _ in range(max_rounds):
        remaining = [e for e in rng.permutation(src.size).tolist() if int(src[e]) * scale + int(dst[e]) in real]
        if not remaining:
            return torch.from_numpy(np.stack([src, dst]))
        for edge in remaining:
            a, b = int(src[edge]), int(dst[edge])
            if a * scale + b not in real:  # already swapped away as another edge's partner
                continue
            for partner in rng.integers(0, src.size, size=tries).tolist():
                c, d = int(src[partner]), int(dst[partner])
                first, second = a * scale + d, c * scale + b
                if a == d or c == b or first in present or second in present or first in real or second in real:
                    continue
                present.difference_update((a * scale + b, c * scale + d))
                present.update((first, second))
                dst[edge], dst[partner] = d, b
                break
    left = sum(int(s_) * scale + int(d_) in real for s_, d_ in zip(src, dst))
    raise ValueError(f"rewiring left {left} of {src.size} real edges after {max_rounds} rounds: the prior is too "
                     "dense to rewire away from itself; use grn_mode='random' instead.")


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
    if mode == "rewired":
        return shuffled_control_edges(grn_edges, seed, avoid_prior=True)
    return _distinct_non_self(grn_edges)
