"""Pretraining objectives compared by what they teach the cell embedding: each variant of a pretraining config
pretrained on the same tokenized cells, then its frozen embedding of every cell read by a cross-validated linear
probe of each label column, the silhouette of those labels, and how well it predicts sequencing depth, beside
the same reading of 50 principal components of the counts and of an untrained encoder.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..cells.prepared import load_prepared
from ..cells.reading import read_cells
from ..evaluation.baselines import best_trivial_loss
from ..evaluation.probe import cross_validated_baselines, cross_validated_probe
from ..grn.attach import attach_grn, new_config
from ..hub.model_folder import load_pretrained
from ..model.modeling_scgrn import ScGrnForMaskedExpressionModeling
from ..storage.folders import jsonable
from ..tl.verbs import embed
from ..train.training import TrainingConfig
from .data import CellSource, prepared_data
from .pretrain import run_pretraining

PCA_ROW = "50 principal components of the log-normalised counts"
RANDOM_ROW = "untrained encoder (the base config, not pretrained)"


BASELINE_ROWS = {"logistic_regression": "logistic regression on the log-normalised counts",
                 "knn": "kNN (k=5) on the 50 principal components", "majority_class": "majority class"}


def read_labelled_cells(cells, label_columns):
    """`read_cells(cells)`, refused in one line when any of `label_columns` is not among its obs columns."""
    adata = read_cells(cells)
    missing = [c for c in label_columns if c not in adata.obs]
    if missing:
        raise ValueError(f"the cells have no label column {missing}; columns are {list(adata.obs.columns)}.")
    return adata


def log_normalised(adata):
    """The cells as counts per 10,000, log1p (scanpy's standard path), read once by every row that is not a model."""
    import scanpy as sc

    normalised = adata.copy()
    sc.pp.normalize_total(normalised, target_sum=1e4)
    sc.pp.log1p(normalised)
    return normalised


def count_depth(adata, normalised) -> dict[str, np.ndarray]:
    """Per cell, from raw counts (`adata`) and their `log_normalised` values: genes detected and the mean
    log1p-normalised value of those genes (what the tokens carry), the two depth measures the probe regresses on."""
    x = normalised.X.tocsr() if hasattr(normalised.X, "tocsr") else normalised.X
    detected = np.asarray((adata.X > 0).sum(1)).ravel().astype(float)
    return {"genes_detected": detected, "mean_log1p": np.asarray(x.sum(1)).ravel() / np.maximum(detected, 1)}


def principal_components(normalised, n_components: int = 50, seed: int = 0) -> np.ndarray:
    """`n_components` principal components of `log_normalised` cells."""
    import scanpy as sc

    normalised = normalised.copy()
    sc.pp.pca(normalised, n_comps=min(n_components, min(normalised.shape) - 1), random_state=seed)
    return normalised.obsm["X_pca"]


def pca_yardstick(cells, label_column: str, seed: int = 0):
    """What every embedding benchmark reads beside its own model: the raw-count cells (`read_labelled_cells`),
    their labels as strings, their `log_normalised` copy, and the 5-fold probe accuracy of its 50 principal
    components."""
    adata = read_labelled_cells(cells, [label_column])
    labels = adata.obs[label_column].astype(str).to_numpy()
    normalised = log_normalised(adata)
    pca = cross_validated_probe(principal_components(normalised, seed=seed), {"label": labels}, {},
                                seed=seed)["label"]["accuracy"]
    return adata, labels, normalised, pca


def variant_configs(base: dict, variant: dict, output_dir: Path, seed: int) -> tuple[dict, TrainingConfig]:
    """The base config's `model` and `training` sections with the variant's entries laid over them."""
    unknown = sorted(set(variant) - {"model", "training"})
    if unknown:
        raise ValueError(f"a variant holds `model` and `training` sections only, not {unknown}.")
    model = {**(base.get("model") or {}), **(variant.get("model") or {})}
    training = {**(base.get("training") or {}), **(variant.get("training") or {})}
    config = TrainingConfig.from_dict(training, output_dir=str(output_dir))
    return model, replace(config, seed=int(seed), report_to="none")


def _embedding(model, tokenizer, adata, max_length) -> np.ndarray:
    return embed(adata, model, tokenizer, max_length=max_length, copy=True).obsm["X_scgrn"]


def run_objectives(cells, prior, output_dir, variants: dict, *, base: dict | None = None,
                   label_columns=("bulk_labels", "louvain"), seeds=(0,), resource: str | None = None,
                   folds: int = 5) -> str:
    """Pretrain each of `variants` (`{name: {"model": {...}, "training": {...}}}` laid over `base`, a pretraining
    config's sections) for each seed on `cells` tokenized once with `prior`, and read every cell's frozen
    embedding ([`cross_validated_probe`]); writes `objectives.json`, `objectives.csv` and `objectives.md` under
    `output_dir` and returns the markdown."""
    output, base = Path(output_dir), dict(base or {})
    adata = read_labelled_cells(cells, label_columns)
    data_dir = prepared_data(CellSource(cells=cells, prior=prior, resource=resource, label_column=label_columns[0]),
                             output)
    _, tokenizer, network, metadata = load_prepared(data_dir)
    max_length = metadata["data_config"]["max_length"]
    labels = {c: adata.obs[c].to_numpy() for c in label_columns}
    normalised = log_normalised(adata)
    depths, components = count_depth(adata, normalised), principal_components(normalised)

    def row(name, seed, embedding, **extra):
        return {"variant": name, "seed": seed, **extra,
                **cross_validated_probe(embedding, labels, depths, folds=folds, seed=0)}

    rows = [row(PCA_ROW, None, components)]
    baselines = cross_validated_baselines(normalised.X, components, labels, folds=folds, seed=0)
    rows += [{"variant": BASELINE_ROWS[name], "seed": None, **scores} for name, scores in baselines.items()]
    torch.manual_seed(0)
    untrained = ScGrnForMaskedExpressionModeling(new_config(tokenizer, **(base.get("model") or {})))
    attach_grn(untrained, network, tokenizer)
    rows.append(row(RANDOM_ROW, 0, _embedding(untrained, tokenizer, adata, max_length)))
    for name, variant in variants.items():
        for seed in seeds:
            folder = output / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") / f"seed{seed}"
            model_options, training = variant_configs(base, variant, folder, seed)
            summary = run_pretraining(data_dir, training, model_options=model_options)
            model = load_pretrained(ScGrnForMaskedExpressionModeling, str(folder / "model"), trained_head=True)
            trained_head = summary["validation"]["token_head_trained"]  # else an untrained head's error
            rows.append(row(name, seed, _embedding(model, tokenizer, adata, max_length),
                            masked_loss=summary["validation_loss"] if trained_head else None,
                            best_trivial=best_trivial_loss(summary["baselines"])))
    markdown = objectives_markdown(rows, label_columns, len(adata), folds)
    output.mkdir(parents=True, exist_ok=True)
    (output / "objectives.json").write_text(json.dumps(rows, indent=2, default=jsonable))
    _frame(rows).to_csv(output / "objectives.csv", index=False)
    (output / "objectives.md").write_text(markdown)
    return markdown


def _frame(rows: list[dict]):
    import pandas as pd

    flat = []
    for r in rows:
        entry = {k: v for k, v in r.items() if not isinstance(v, dict)}
        for column, scores in ((k, v) for k, v in r.items() if isinstance(v, dict)):
            entry.update({f"{column}_{k}": v for k, v in scores.items()})
        flat.append(entry)
    return pd.DataFrame(flat)


def objectives_markdown(rows: list[dict], label_columns, cells: int, folds: int) -> str:
    """Mean over seeds per variant: the masked loss beside its best trivial predictor, each label column's probe
    accuracy and silhouette, and the depth R^2; then the verdict against PCA."""
    frame = _frame(rows)
    metrics = [f"{c}_{m}" for c in label_columns for m in ("accuracy", "silhouette")]
    metrics += ["depth_r2_mean_log1p", "depth_r2_genes_detected"]
    head = ["masked loss", "best trivial"] + [f"{c} {m}" for c in label_columns for m in ("probe", "silhouette")]
    lines = [f"Frozen embedding of all {cells} cells, {folds}-fold cross-validated logistic regression (accuracy) and "
             "linear regression to depth (R^2), each cell scored held out; mean over pretraining seeds.", "",
             "| variant | " + " | ".join(head + ["depth R^2 mean log1p", "depth R^2 genes detected"]) + " |",
             "| --- |" + " --- |" * (len(head) + 2)]
    reference = [PCA_ROW, RANDOM_ROW, *BASELINE_ROWS.values()]

    def cell(group, column, digits):
        return f"{group[column].mean():.{digits}f}" if column in group and group[column].notna().any() else "-"

    for name, group in frame.groupby("variant", sort=False):
        label = name if name in reference else f"{name} ({len(group)} seed{'s' * (len(group) > 1)})"
        values = [cell(group, c, 4) for c in ("masked_loss", "best_trivial")] + [cell(group, m, 3) for m in metrics]
        lines.append(f"| {label} | " + " | ".join(values) + " |")
    pca = frame[frame["variant"] == PCA_ROW].iloc[0]
    trained = frame[~frame["variant"].isin(reference)]
    if len(trained):
        lines.append("")
        for column in label_columns:
            best = trained.groupby("variant")[f"{column}_accuracy"].mean()
            gap = best.max() - pca[f"{column}_accuracy"]
            verdict = "beats" if gap > 0 else "does NOT beat"
            lines.append(f"- `{column}`: the best variant ({best.idxmax()}, {best.max():.3f}) {verdict} PCA "
                         f"({pca[f'{column}_accuracy']:.3f}) by {gap:+.3f}"
                         + _against_counts(frame, column, best.max()))
    return "\n".join(lines) + "\n"


def _against_counts(frame, column: str, best: float) -> str:
    """The verdict's tail: the best variant against logistic regression on the counts, where that row is present."""
    counts = frame.loc[frame["variant"] == BASELINE_ROWS["logistic_regression"], f"{column}_accuracy"]
    if counts.empty:
        return "."
    verdict = "beats" if best > counts.iloc[0] else "does NOT beat"
    return f"; it {verdict} logistic regression on the counts ({counts.iloc[0]:.3f})."
