"""Reading attention as regulation: per-cell-type gene -> gene attention scores, their agreement with the prior,
the top attended TF -> target pairs, candidate links the prior lacks, and a heat map.

Orientation: with `grn_direction="regulator_to_target"` (the default) a gene (query) reads its regulators (keys),
so the weight a query gene i gives key gene j is read as evidence for the edge j -> i (regulator j, target i).
With `"target_to_regulator"` the query is the regulator. A dense model is read with the same orientation as the
GRN model it is compared with (its `grn_direction`), so its attention can be scored against the prior: prior edges
vs every other pair of genes present together, where a non-edge can carry weight.

Score of a pair in a cell type: attention (mean over the chosen layers and all heads) that the pair's query gives
its key, averaged over the cells of that type where both genes are present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..cells.config import SEQUENCE_COLUMNS
from ..evaluation.inference import run_batches
from ..grn.network import GeneRegulatoryNetwork
from ..model.masks import token_roles


def _merge(keys: np.ndarray, sums: np.ndarray, counts: np.ndarray):
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=sums), np.bincount(inverse, weights=counts)


def _add_batch(totals: dict, batch: dict, out, labels: list[str], layer_ids, reads_regulators: bool, encoder):
    """Add one batch's gene -> gene attention (mean over `layer_ids` and heads) to the per-cell-type totals."""
    config = encoder.config
    vocab = config.vocab_size
    weights = torch.stack([out.attentions[i] for i in layer_ids]).float().mean(dim=(0, 2)).cpu()
    ids = batch["input_ids"].cpu()
    _, _, genes = token_roles(ids, batch["attention_mask"].cpu(), config.cls_token_id, encoder.special_token_ids)
    pair = genes[:, :, None] & genes[:, None, :] & ~torch.eye(ids.shape[1], dtype=torch.bool)[None]
    regulator = ids[:, None, :] if reads_regulators else ids[:, :, None]  # key / query
    target = ids[:, :, None] if reads_regulators else ids[:, None, :]
    keys = (regulator * vocab + target).expand_as(pair)
    for row, label in enumerate(labels):
        k, w = keys[row][pair[row]].numpy(), weights[row][pair[row]].numpy()
        c = np.ones_like(w)
        old = totals.get(label)
        if old is not None:
            k, w, c = np.concatenate([old[0], k]), np.concatenate([old[1], w]), np.concatenate([old[2], c])
        totals[label] = _merge(k, w, c)


def attention_scores(model, tokenizer, dataset, label_column: str, *, batch_size: int = 16, layers=None,
                     max_cells_per_label: int | None = None, device=None, progress: bool = False) -> dict:
    """Per cell type, gene -> gene attention scores of `model` over `dataset` (a tokenized `datasets.Dataset`).

    Args:
        model: any scgrn model (its encoder is used; attention is computed with the eager kernel, which returns
            probabilities, and the model's implementation is restored afterwards).
        tokenizer: the model's `ScGrnTokenizer` (gene names of the ids).
        dataset: tokenized cells with `label_column` (from data/tokenize_cells.py).
        layers: indices of the blocks to average (default: all).
        max_cells_per_label: read at most this many cells of each type (the first ones).
    Returns:
        `{cell type: DataFrame(regulator, target, score, cells)}` sorted by score, where `cells` is the number of
        cells of that type holding both genes. Pairs with zero weight in every cell (off a GRN mask) keep score 0.
    """
    from ..cells.collators import DataCollatorForCellClassification

    if label_column not in dataset.column_names:
        raise ValueError(f"the dataset has no column {label_column!r}; columns are {dataset.column_names}.")
    encoder = model.base_model
    config = encoder.config
    tokenizer.check_matches(config)
    labels = [str(v) for v in dataset[label_column]]
    keep = np.ones(len(labels), dtype=bool)
    if max_cells_per_label is not None:
        seen: dict[str, int] = {}
        for i, label in enumerate(labels):
            seen[label] = seen.get(label, 0) + 1
            keep[i] = seen[label] <= max_cells_per_label
    subset = dataset.select(np.flatnonzero(keep)).remove_columns(
        [c for c in dataset.column_names if c not in SEQUENCE_COLUMNS])
    subset_labels = [labels[i] for i in np.flatnonzero(keep)]
    vocab = config.vocab_size
    reads_regulators = config.grn_direction != "target_to_regulator"
    layer_ids = list(range(config.num_hidden_layers)) if layers is None else list(layers)
    device = device or next(encoder.parameters()).device
    previous = config._attn_implementation
    encoder.set_attn_implementation("eager")
    totals: dict[str, tuple] = {}
    try:
        collator = DataCollatorForCellClassification(pad_token_id=config.pad_token_id)
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False, collate_fn=collator)
        start = 0
        for batch, out in run_batches(encoder, loader, device=device, progress=progress, desc="attention",
                                      output_attentions=True):
            batch_labels = subset_labels[start : start + batch["input_ids"].shape[0]]
            _add_batch(totals, batch, out, batch_labels, layer_ids, reads_regulators, encoder)
            start += len(batch_labels)
    finally:
        encoder.set_attn_implementation(previous)
    names = np.asarray(tokenizer.convert_ids_to_tokens(list(range(vocab))), dtype=object)
    result = {}
    for label, (keys, sums, counts) in sorted(totals.items()):
        regulator, target = np.divmod(keys.astype(np.int64), vocab)
        frame = pd.DataFrame({"regulator": names[regulator], "target": names[target], "score": sums / counts,
                              "cells": counts.astype(np.int64)})
        result[label] = frame.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
    return result


def _prior_flags(frame: pd.DataFrame, network: GeneRegulatoryNetwork, both_ways: bool) -> np.ndarray:
    edges = set(zip(network.edges["source"], network.edges["target"]))
    pairs = zip(frame["regulator"], frame["target"])
    if both_ways:
        return np.fromiter(((r, t) in edges or (t, r) in edges for r, t in pairs), bool, len(frame))
    return np.fromiter(((r, t) in edges for r, t in pairs), bool, len(frame))


def prior_agreement(scores: dict, network: GeneRegulatoryNetwork, *, both_ways: bool = False) -> dict:
    """Per cell type, how well attention ranks prior edges above every other co-present gene pair: AUROC and
    AUPRC (with the AUPRC of a random ranking, the share of positives, beside it). Meaningful for a dense model's
    attention, where a non-edge can carry weight; a GRN-masked model scores 1.0 by construction."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    report = {}
    for label, frame in scores.items():
        positive = _prior_flags(frame, network, both_ways)
        entry = {"pairs": int(len(frame)), "prior_edges": int(positive.sum())}
        if 0 < positive.sum() < len(frame):
            entry.update(auroc=float(roc_auc_score(positive, frame["score"])),
                         auprc=float(average_precision_score(positive, frame["score"])),
                         random_auprc=float(positive.mean()))
        report[label] = entry
    return report


def top_pairs(scores: dict, network: GeneRegulatoryNetwork | None = None, n: int = 10, *,
              regulators_only: bool = False, outside_prior: bool = False, both_ways: bool = False) -> dict:
    """The `n` highest-scoring pairs per cell type, with `in_prior` and `known_regulator` flags.

    `regulators_only`: keep pairs whose regulator is a regulator of the network (TF -> target pairs).
    `outside_prior`: keep pairs the prior lacks (candidate new links, from a dense model's attention)."""
    result = {}
    regulators = set(network.edges["source"]) if network is not None else set()
    for label, frame in scores.items():
        frame = frame[frame["score"] > 0].copy()
        if network is not None:
            frame["in_prior"] = _prior_flags(frame, network, both_ways)
            frame["known_regulator"] = frame["regulator"].isin(regulators)
            if regulators_only:
                frame = frame[frame["known_regulator"]]
            if outside_prior:
                frame = frame[~frame["in_prior"]]
        result[label] = frame.head(n).reset_index(drop=True)
    return result


def plot_attention_heatmap(scores: dict, regulators: list[str], path, *, targets_per_regulator: int = 8) -> Path:
    """PNG heat map: rows are `regulator -> target` pairs (each chosen regulator's most attended targets over all
    cell types), columns are cell types, colour is the attention score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.concat([f.assign(cell_type=label) for label, f in scores.items()])
    table = table[table["regulator"].isin(regulators) & (table["score"] > 0)]
    if table.empty:
        raise ValueError(f"none of {regulators} is attended as a regulator in these cells; pick regulators listed "
                         "in the top pairs (top_pairs) or present in the data's genes.")
    rows = []
    for regulator in regulators:
        best = (table[table["regulator"] == regulator].groupby("target")["score"].max()
                .sort_values(ascending=False).head(targets_per_regulator))
        rows += [(regulator, target) for target in best.index]
    grid = (table.set_index(["regulator", "target", "cell_type"])["score"].unstack("cell_type")
            .reindex(pd.MultiIndex.from_tuples(rows)).reindex(columns=list(scores)).fillna(0.0))
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * grid.shape[1], 1.5 + 0.28 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]), [f"{r} -> {t}" for r, t in grid.index], fontsize=7)
    ax.set_title("attention of target on regulator, by cell type", fontsize=9)
    fig.colorbar(image, ax=ax, label="mean attention")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
