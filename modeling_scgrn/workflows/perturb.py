"""Perturbation run: read cells and a model folder, delete or overexpress genes in silico, and write the effects,
a heat map and regulon enrichment.
"""

from __future__ import annotations

import numpy as np

from ..tl.perturb import perturb, plot_effects, regulon_enrichment


def run_perturbation(cells, model_folder, genes, output_dir, *, mode: str = "delete", classifier_folder=None,
                     max_cells: int | None = None, top: int = 25, batch_size: int = 16, seed: int = 0,
                     prior=None, resource: str | None = None) -> dict:
    """`perturb` from files: a pretrained (masked-expression) model folder, cells (.h5ad of raw counts or
    `pbmc68k_reduced`), optionally a finetuned classifier folder; writes `effects.csv`, `effects_heatmap.png`,
    `embedding_shift.csv` (per cell), `label_moves.csv` (with a classifier) and `summary.json` into `output_dir`.
    With `prior` (a network file), the summary adds `regulon_enrichment` of each perturbed regulator's top 20
    predicted targets."""
    import json
    from pathlib import Path

    from ..cells.reading import read_cells
    from ..hub.model_folder import check_compatible, load_pretrained
    from ..model.modeling_scgrn import ScGrnForCellClassification, ScGrnForMaskedExpressionModeling
    from ..model.tokenization_scgrn import ScGrnTokenizer
    from ..storage.folders import jsonable

    tokenizer = ScGrnTokenizer.from_pretrained(model_folder)
    check_compatible(model_folder, tokenizer)
    model = load_pretrained(ScGrnForMaskedExpressionModeling, model_folder, trained_head=True)
    classifier = None
    if classifier_folder:
        check_compatible(classifier_folder, tokenizer)  # the same genes under the same ids, not just as many
        classifier = load_pretrained(ScGrnForCellClassification, classifier_folder, trained_head=True)
    adata = read_cells(cells)
    if max_cells is not None and adata.n_obs > max_cells:
        adata = adata[np.sort(np.random.default_rng(seed).permutation(adata.n_obs)[:max_cells])].copy()
    effects = perturb(adata, model, tokenizer, genes, mode, classifier=classifier, batch_size=batch_size, seed=seed)
    result = adata.uns["scgrn_perturbation"]
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    effects.to_csv(output / "effects.csv")
    result["embedding_shift"].to_csv(output / "embedding_shift.csv")
    plot_effects(effects, output / "effects_heatmap.png", top=top, units=result["units"])
    summary = {"mode": mode, "units": result["units"], "cells": int(adata.n_obs),
               "cells_perturbed": result["cells_perturbed"],
               "mean_embedding_shift": result["embedding_shift"].mean().to_dict(),
               "top_effects": {g: effects.loc[g].dropna().abs().sort_values(ascending=False).index[:10].tolist()
                               for g in effects.index}}
    if classifier is not None:
        result["label_moves"].to_csv(output / "label_moves.csv")
        summary["label_changed"] = result["label_changed"]
    if prior is not None:
        from ..grn.network import GeneRegulatoryNetwork

        summary["regulon_enrichment"] = regulon_enrichment(effects, GeneRegulatoryNetwork.read(prior, resource),
                                                           seed=seed)
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    return summary
