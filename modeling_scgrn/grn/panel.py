"""The gene panel of a model: which genes of a dataset become tokens, chosen with the prior in mind."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .coverage import prior_report
from .network import GeneRegulatoryNetwork


def select_gene_panel(
    adata,
    network: GeneRegulatoryNetwork,
    *,
    n_top_genes: int = 2000,
    strategy: str = "union",
    prior_share: float = 0.5,
    min_cells: int = 3,
    layer: str | None = None,
) -> tuple[list[str], dict]:
    """Choose a gene panel that knows the prior.

    `strategy="hvg"`: the `n_top_genes` highly variable genes. `"union"`: those HVGs plus every prior gene
    (regulator or target) detected in at least `min_cells` cells. `"ranked"`: `n_top_genes` in total, a `prior_share` of them
    from prior genes (expressed regulators first, then targets, each ranked by the same variability score), the
    rest from the most variable other genes.
    Variability is scanpy's `highly_variable_genes(flavor="seurat")` normalised dispersion, computed on a
    total-count-normalised, log1p copy of the raw counts in `adata.X` (or `layer`); `adata` is not modified.
    Returns the genes and a report comparing the prior's coverage against plain HVGs.
    """
    import anndata
    import scanpy as sc

    if strategy not in ("hvg", "union", "ranked"):
        raise ValueError(f"strategy={strategy!r} is not one of ['hvg', 'union', 'ranked'].")
    n_top = min(n_top_genes, adata.n_vars)
    work = anndata.AnnData(adata.X if layer is None else adata.layers[layer], var=pd.DataFrame(index=adata.var_names))
    work = work.copy()
    sc.pp.normalize_total(work, target_sum=1e4)
    sc.pp.log1p(work)
    scores = sc.pp.highly_variable_genes(work, n_top_genes=n_top, flavor="seurat", inplace=False)
    scores.index = adata.var_names.astype(str)
    ranking = scores["dispersions_norm"].fillna(-np.inf).sort_values(ascending=False, kind="stable")
    hvg = list(ranking.index[:n_top])
    matrix = adata.X if layer is None else adata.layers[layer]
    detected = pd.Series(np.asarray((matrix > 0).sum(axis=0)).ravel() >= min_cells, index=scores.index)
    prior_genes = set(network.genes)
    expressed_prior = [g for g in ranking.index if g in prior_genes and detected[g]]
    if strategy == "hvg":
        panel = hvg
    elif strategy == "union":
        in_hvg = set(hvg)
        panel = hvg + [g for g in expressed_prior if g not in in_hvg]
    else:
        # regulators first: a target without its TF in the panel adds no edge
        regulators = set(network.regulators)
        prior_order = [g for g in expressed_prior if g in regulators] + [g for g in expressed_prior if g not in regulators]
        chosen = prior_order[: int(round(prior_share * n_top))]
        in_chosen = set(chosen)
        panel = chosen + [g for g in ranking.index if g not in in_chosen][: n_top - len(chosen)]
    report = {
        "strategy": strategy,
        "panel_genes": len(panel),
        "hvg_only": {k: prior_report(network, hvg)[k] for k in ("panel_genes", "edges_in_panel", "regulators_in_panel")},
        "prior_aware": {k: prior_report(network, panel)[k] for k in ("panel_genes", "edges_in_panel", "regulators_in_panel")},
    }
    return panel, report
