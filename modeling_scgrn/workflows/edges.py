"""Edge runs: a model folder and cells in, the regulatory edge table and a picture of the top regulons out; and the
known-truth edges benchmark from a simulated corpus and pretrained model folders.
"""

from __future__ import annotations

import json
from pathlib import Path

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
    score), `edges_seconds.json` and `edges.png` into `output_dir`; returns the markdown."""
    import anndata
    import pandas as pd

    from ..bench.edges import edges_benchmark, edges_markdown, plot_edges
    from ..storage.folders import jsonable

    cells = anndata.read_h5ad(corpus_path)
    if "scgrn_simulation" not in cells.uns:
        raise ValueError(f"{corpus_path} is not a simulated corpus (no uns['scgrn_simulation']); make one with "
                         "data/simulate_cells.py.")
    models = {name: _load(folder) for name, folder in model_folders.items()}
    rows, seconds = edges_benchmark(cells, models, max_cells=max_cells, seed=seed)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(output / "edges.csv", index=False)
    (output / "edges_seconds.json").write_text(json.dumps(seconds, indent=2, default=jsonable))
    plot_edges(rows, output / "edges.png")
    markdown = (f"Corpus: {cells.n_obs} cells x {cells.n_vars} genes; models scored on {min(max_cells, cells.n_obs)} "
                f"of them (seed {seed}); correlation on every cell, trees on up to 1,000.\n\n"
                + edges_markdown(rows, seconds))
    (output / "edges.md").write_text(markdown)
    return markdown

