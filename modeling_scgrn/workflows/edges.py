"""Edge runs: a model folder and cells in, the regulatory edge table and a picture of the top regulons out; and the
known-truth edges benchmark from a simulated corpus and pretrained model folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..tl.edges import EDGE_METHODS, plot_regulons, regulatory_edges

EDGE_TABLE_SUFFIXES = (".csv", ".parquet")


def _load(model_folder):
    from ..hub.model_folder import check_compatible, load_pretrained
    from ..model.modeling_scgrn import ScGrnForMaskedExpressionModeling
    from ..model.tokenization_scgrn import ScGrnTokenizer

    tokenizer = ScGrnTokenizer.from_pretrained(model_folder)
    check_compatible(model_folder, tokenizer)
    return load_pretrained(ScGrnForMaskedExpressionModeling, model_folder, trained_head=True), tokenizer


def run_edges(cells, model_folder, output_dir, *, method: str = "perturbation", table: str = "edges.csv",
              prior=None, resource: str | None = None, regulators=None, max_cells: int | None = None,
              top: int = 12, batch_size: int = 64, seed: int = 0) -> dict:
    """`regulatory_edges` from files: a pretrained (masked-expression) model folder and cells (.h5ad of raw counts
    or `pbmc68k_reduced`); writes the edge table (`table`: a `.csv` or `.parquet` name), `top_regulons.png` (the
    `top` regulators with the largest summed |weight|) and `summary.json` into `output_dir`. With `prior` (a network
    file), `in_prior` and the default regulators follow it instead of the model's own prior."""
    from ..cells.reading import read_cells
    from ..grn.network import GeneRegulatoryNetwork
    from ..storage.folders import jsonable

    if method not in EDGE_METHODS:
        raise ValueError(f"method {method!r} is not one of {list(EDGE_METHODS)}.")
    if Path(table).suffix not in EDGE_TABLE_SUFFIXES or Path(table).name != table:
        raise ValueError(f"table {table!r} must be a file name ending in {' or '.join(EDGE_TABLE_SUFFIXES)}.")
    model, tokenizer = _load(model_folder)
    network = GeneRegulatoryNetwork.read(prior, resource) if prior is not None else None
    adata = read_cells(cells)
    edges = regulatory_edges(adata, model, tokenizer, method=method, network=network, regulators=regulators,
                             max_cells=max_cells, batch_size=batch_size, seed=seed)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if table.endswith(".parquet"):
        edges.to_parquet(output / table, index=False)
    else:
        edges.to_csv(output / table, index=False)
    plot_regulons(edges, output / "top_regulons.png", top=top)
    result = adata.uns["scgrn_edges"]
    summary = {"method": method, "units": result["units"], "cells": result["params"]["cells"],
               "pairs": int(len(edges)), "pairs_in_prior": int(edges["in_prior"].sum()),
               "regulators": int(edges["source"].nunique()),
               "top_edges": edges.head(20)[["source", "target", "weight", "in_prior"]].to_dict("records")}
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    return summary


def run_edges_benchmark(corpus_path, model_folders: dict, output_dir, *, max_cells: int = 500,
                        seed: int = 0) -> str:
    """`bench.edges.edges_benchmark` from files: a simulated corpus (.h5ad from data/simulate_cells.py) and
    pretrained model folders (`{name: folder}`); writes `edges.md`, `edges.csv` (one row per question, model and
    score), `pair_scores.parquet` (every candidate pair's scores), `edges_seconds.json` and `edges.png` into
    `output_dir`; returns the markdown."""
    import anndata
    import pandas as pd

    from ..bench.edges import edges_benchmark, edges_markdown, plot_edges
    from ..storage.folders import jsonable

    cells = anndata.read_h5ad(corpus_path)
    if "scgrn_simulation" not in cells.uns:
        raise ValueError(f"{corpus_path} is not a simulated corpus (no uns['scgrn_simulation']); make one with "
                         "data/simulate_cells.py.")
    models = {name: _load(folder) for name, folder in model_folders.items()}
    rows, seconds, pair_scores = edges_benchmark(cells, models, max_cells=max_cells, seed=seed)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    pair_scores.to_parquet(output / "pair_scores.parquet", index=False)
    pd.DataFrame(rows).to_csv(output / "edges.csv", index=False)
    (output / "edges_seconds.json").write_text(json.dumps(seconds, indent=2, default=jsonable))
    plot_edges(rows, output / "edges.png")
    markdown = (f"Corpus: {cells.n_obs} cells x {cells.n_vars} genes; models scored on {min(max_cells, cells.n_obs)} "
                f"of them (seed {seed}); correlation on every cell, trees on up to 1,000.\n\n"
                + edges_markdown(rows, seconds))
    (output / "edges.md").write_text(markdown)
    return markdown



def run_curated_edges(cells, model_folders: dict, omnipath, output_dir, *, methods=("perturbation", "attention"),
                      max_cells: int = 300, permutations: int = 2000, seed: int = 0) -> str:
    """Real cells, two curated priors (`bench.edges.curated_agreement`): each model (`{name: folder}`, trained with
    CollecTRI) scores CollecTRI's regulators against every gene of its vocabulary with each of `methods`, beside
    |Pearson r| on the same cells; do CollecTRI edges that DoRothEA also lists rank above CollecTRI-only ones, and
    DoRothEA-only edges above pairs in neither? Writes `curated.md` and `curated.csv`; returns the markdown."""
    import anndata
    import pandas as pd

    from ..bench.edges import curated_agreement
    from ..bench.known_truth import correlation_pair_scores
    from ..cells.reading import read_cells
    from ..grn.network import GeneRegulatoryNetwork

    priors = {name: GeneRegulatoryNetwork.read(omnipath, name) for name in ("collectri", "dorothea")}
    first, second = ({tuple(p) for p in priors[n].edges[["source", "target"]].itertuples(index=False)}
                     for n in ("collectri", "dorothea"))
    adata = read_cells(cells)
    if max_cells is not None and adata.n_obs > max_cells:
        adata = adata[np.sort(np.random.default_rng(seed).permutation(adata.n_obs)[:max_cells])].copy()
    rows, lines = [], []
    for name, folder in model_folders.items():
        model, tokenizer = _load(folder)
        scores = None
        for method in methods:
            edges = regulatory_edges(adata, model, tokenizer, method=method, network=priors["collectri"],
                                     seed=seed, progress=False)
            table = edges[["source", "target", "weight"]].rename(columns={"weight": method})
            scores = table if scores is None else scores.merge(table, on=["source", "target"], how="outer")
        scores = scores.fillna(0.0)
        genes = [g for g in adata.var_names if g in tokenizer.get_vocab()]
        panel = anndata.AnnData(adata[:, genes].X, var=pd.DataFrame(index=genes))
        pairs = correlation_pair_scores(panel, scores.rename(columns={"source": "regulator"})[["regulator", "target"]])
        scores["|Pearson r|"] = pairs["pearson"].to_numpy()
        for row in curated_agreement(scores, first, second, [*methods, "|Pearson r|"], permutations=permutations,
                                     seed=seed):
            rows.append({"model": name, **row})
        lines.append(f"- {name}: {len(scores)} pairs scored ({scores['source'].nunique()} CollecTRI regulators) on "
                     f"{adata.n_obs} cells")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(output / "curated.csv", index=False)
    table = ["| model | comparison | score | positives | negatives | AUROC | permutation p |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    table += [f"| {r.model} | {r.comparison} | {r.score} | {r.positives} | {r.negatives} | {r.auroc:.3f} | "
              f"{r.p_value:.4f} |" for r in frame.itertuples()]
    markdown = "\n".join(lines + ["", *table]) + "\n"
    (output / "curated.md").write_text(markdown)
    return markdown
