"""Perturbation run: read cells and a model folder, delete or overexpress genes in silico, and write the effects,
a heat map and regulon enrichment.
"""

from __future__ import annotations

import numpy as np

from ..options.arguments import PerturbationOptions
from ..tl.perturb import perturb, plot_effects, regulon_enrichment


def run_perturbation(cells, model_folder, genes, output_dir, options: PerturbationOptions | None = None, *,
                     classifier_folder=None, prior=None, resource: str | None = None) -> dict:
    """`perturb` from files: a pretrained (masked-expression) model folder, cells (.h5ad of raw counts or
    `pbmc68k_reduced`), optionally a finetuned classifier folder, perturbed as `options` say
    ([`PerturbationOptions`]); writes `effects.csv`, `effects_heatmap.png`,
    `embedding_shift.csv` (per cell), `label_moves.csv` (with a classifier) and `summary.json` into `output_dir`;
    with `rounds` > 1 (a cascade, see `perturb`) also `first_round_effects.csv` and, for a GRN model,
    `prior_distance.csv`, and the summary's top effects split into direct and indirect targets of the prior.
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
    options = PerturbationOptions() if options is None else options
    mode, rounds, max_cells, seed = options.mode, options.rounds, options.max_cells, options.seed
    adata = read_cells(cells)
    if max_cells is not None and adata.n_obs > max_cells:
        adata = adata[np.sort(np.random.default_rng(seed).permutation(adata.n_obs)[:max_cells])].copy()
    effects = perturb(adata, model, tokenizer, genes, mode, classifier=classifier, rounds=rounds,
                      batch_size=options.batch_size, seed=seed)
    result = adata.uns["scgrn_perturbation"]
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    effects.to_csv(output / "effects.csv")
    result["embedding_shift"].to_csv(output / "embedding_shift.csv")
    plot_effects(effects, output / "effects_heatmap.png", top=options.top, units=result["units"])
    summary = {"mode": mode, "units": result["units"], "cells": int(adata.n_obs),
               "cells_perturbed": result["cells_perturbed"],
               "mean_embedding_shift": result["embedding_shift"].mean().to_dict(),
               "top_effects": {g: effects.loc[g].dropna().abs().sort_values(ascending=False).index[:10].tolist()
                               for g in effects.index}}
    if rounds > 1:
        summary.update(rounds=result["rounds"], **_cascade_outputs(result, output))
    if classifier is not None:
        result["label_moves"].to_csv(output / "label_moves.csv")
        summary["label_changed"] = result["label_changed"]
    if prior is not None:
        from ..grn.network import GeneRegulatoryNetwork

        summary["regulon_enrichment"] = regulon_enrichment(effects, GeneRegulatoryNetwork.read(prior, resource),
                                                           seed=seed)
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    return summary


def _cascade_outputs(result: dict, output) -> dict:
    """Write a cascade's first-pass effects and prior distances; the strongest final effects split into direct
    (one prior edge away) and indirect (two or more) targets."""
    result["first_round"].to_csv(output / "first_round_effects.csv")
    if "prior_distance" not in result:
        return {}
    result["prior_distance"].to_csv(output / "prior_distance.csv")
    split = {}
    for gene, row in result["effects"].iterrows():
        distance = result["prior_distance"].loc[gene]
        strongest = row.dropna().abs().sort_values(ascending=False)
        split[gene] = {"direct": [g for g in strongest.index if distance.get(g) == 1][:10],
                       "indirect": [g for g in strongest.index if distance.get(g, 0) >= 2][:10]}
    return {"top_effects_by_distance": split}
