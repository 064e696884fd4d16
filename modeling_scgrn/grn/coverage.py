"""How much of a prior a gene panel and its cells hold: the report written beside every run, per-cell coverage of
tokenized cells, the one-line summary scripts print, and a picture of the mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .network import GeneRegulatoryNetwork


def prior_report(network: GeneRegulatoryNetwork, genes) -> dict:
    """What the prior gives on a gene panel: edges, regulators, targets, density among the panel's ordered gene
    pairs, the share of panel genes without any edge, and in/out-degree distributions."""
    genes = pd.Index(pd.unique(np.asarray(list(map(str, genes)))))
    sub = network.restrict(genes).edges
    n = len(genes)
    out_degree = sub.groupby("source").size().reindex(genes, fill_value=0)
    in_degree = sub.groupby("target").size().reindex(genes, fill_value=0)
    connected = (out_degree + in_degree) > 0

    def summary(degree: pd.Series) -> dict:
        nonzero = degree[degree > 0]
        return {
            "genes_with_degree_above_0": int(nonzero.size),
            "max": int(degree.max()) if n else 0,
            "mean_over_panel": float(degree.mean()) if n else 0.0,
            "median_over_nonzero": float(nonzero.median()) if nonzero.size else 0.0,
            "histogram": {str(k): int(v) for k, v in nonzero.value_counts().sort_index().items()},
        }

    return {
        "resource": network.provenance.get("resource"),
        "panel_genes": int(n),
        "network_edges_total": int(len(network)),
        "edges_in_panel": int(len(sub)),
        "regulators_in_panel": int(sub["source"].nunique()),
        "targets_in_panel": int(sub["target"].nunique()),
        "density": float(len(sub) / (n * (n - 1))) if n > 1 else 0.0,
        "isolated_gene_share": float(1 - connected.mean()) if n else 1.0,
        "out_degree": summary(out_degree),
        "in_degree": summary(in_degree),
    }


LOW_COVERAGE = 0.2  # below this share of a cell's gene tokens with a prior partner, the prior barely acts


def prior_coverage(input_ids, grn_edges, vocab_size: int, special_ids=()) -> dict:
    """What the prior reaches inside cells, not over the panel: for each tokenized cell (`input_ids`, lists or
    rows of vocabulary ids; `special_ids` such as `[CLS]` are not genes), the share of its gene tokens with at least
    one prior partner present in the same cell (either direction), and its active pairs (prior edges with both
    genes present). `grn_edges` is `(2, E)` vocabulary ids (a model's `grn_edges`, so controls are measured as they
    are used)."""
    import scipy.sparse as sp

    edges = np.asarray(grn_edges, dtype=np.int64).reshape(2, -1)
    special = np.asarray(list(special_ids), dtype=np.int64)
    genes = [ids[~np.isin(ids, special)] for ids in (np.asarray(i, dtype=np.int64) for i in input_ids)]
    rows = np.concatenate([np.full(len(ids), cell) for cell, ids in enumerate(genes)]) if genes else []
    columns = np.concatenate(genes) if genes else []
    present = sp.csr_matrix((np.ones(len(columns)), (rows, columns)), shape=(len(genes), vocab_size))
    present.data[:] = 1.0  # a gene listed twice counts once
    directed = sp.csr_matrix((np.ones(edges.shape[1]), (edges[0], edges[1])), shape=(vocab_size, vocab_size))
    directed.data[:] = 1.0
    either = ((directed + directed.T) > 0).astype(np.float64)
    genes_per_cell = np.asarray(present.sum(1)).ravel()
    with_partner = np.asarray(((present @ either) > 0).multiply(present).sum(1)).ravel()
    active_pairs = np.asarray((present @ directed).multiply(present).sum(1)).ravel()
    share = with_partner / np.maximum(genes_per_cell, 1)
    return {
        "cells": int(len(share)),
        "mean_share_of_tokens_with_partner": float(share.mean()) if len(share) else 0.0,
        "median_share_of_tokens_with_partner": float(np.median(share)) if len(share) else 0.0,
        "mean_active_pairs_per_cell": float(active_pairs.mean()) if len(share) else 0.0,
        "median_active_pairs_per_cell": float(np.median(active_pairs)) if len(share) else 0.0,
        "share_of_cells_without_active_pair": float((active_pairs == 0).mean()) if len(share) else 1.0,
    }


def coverage_line(coverage: dict) -> str:
    """One sentence on what the prior reaches in cells, with a warning when it is little."""
    line = (f"prior coverage: {coverage['mean_share_of_tokens_with_partner']:.1%} of a cell's gene tokens have a "
            f"prior partner in the cell; {coverage['mean_active_pairs_per_cell']:.1f} active prior pairs per cell "
            f"(median {coverage['median_active_pairs_per_cell']:.0f}); "
            f"{coverage['share_of_cells_without_active_pair']:.1%} of cells have none")
    if coverage["mean_share_of_tokens_with_partner"] < LOW_COVERAGE:
        line += (f". Below {LOW_COVERAGE:.0%}: the mask constrains few tokens, so grn and dense can hardly differ; a "
                 "prior-aware gene panel (data/tokenize_cells.py --panel ranked or --panel union) reaches more")
    return line + "."


def plot_mask(network: GeneRegulatoryNetwork, genes, path: str | os.PathLike, max_genes: int = 400) -> Path:
    """PNG of the prior's adjacency among panel genes (rows regulators, columns targets), genes ordered by degree;
    the `max_genes` best-connected genes are shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = network.restrict(genes).edges
    degree = pd.concat([sub["source"], sub["target"]]).value_counts()
    shown = degree.index[:max_genes]
    position = {g: i for i, g in enumerate(shown)}
    sub = sub[sub["source"].isin(position) & sub["target"].isin(position)]
    fig, ax = plt.subplots(figsize=(7, 7))
    colors = np.where(sub["weight"] < 0, "tab:blue", "tab:red")
    ax.scatter(sub["target"].map(position), sub["source"].map(position), s=2, c=colors, marker="s", linewidths=0)
    ax.set_xlim(-0.5, len(shown) - 0.5)
    ax.set_ylim(len(shown) - 0.5, -0.5)
    ax.set_xlabel("target gene (by degree)")
    ax.set_ylabel("regulator gene (by degree)")
    ax.set_title(f"{network.provenance.get('resource', 'prior')}: {len(sub)} edges among top {len(shown)} genes\n"
                 "red activation, blue repression")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
