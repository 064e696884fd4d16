"""Regulatory edges out of a model: a score for every regulator -> target pair of genes, as a table in decoupler's
network format (`source`, `target`, `weight`), beside whether the pair is in the prior.

    import modeling_scgrn as scgrn
    edges = scgrn.tl.regulatory_edges(adata, model, tokenizer, method="perturbation")
    # decoupler: dc.mt.ulm(adata, net=edges)  (source, target, weight)

Three scores (`method`), each averaged over the cells holding both genes:

- `"perturbation"`: delete the regulator from the cell (its token hidden from every other token) and predict the
  target's masked value again; the weight is minus the predicted change (log2 fold change of 1 + the normalised
  value; positive: the regulator activates the target). What `tl.perturb` computes for one gene, for every
  regulator present in the cell at once.
- `"gradient"`: input x gradient, `x_r * d y_t / d x_r`, of the target's predicted (masked) value `y_t` with
  respect to the regulator's input value `x_r` (log1p units), by forward-mode differentiation (exact, one pass per
  regulator, through the model's own kernel where it carries tangents, else eager); a continuous-value model only.
- `"attention"`: the attention a target pays its regulator (query = target with the default `grn_direction`),
  averaged over the chosen layers, heads and cells, then balanced (`normalization`): `"sinkhorn"` alternates row and
  column normalisation of the regulator x target matrix (Sinkhorn-Knopp balancing), `"row"` makes each
  target's regulator scores sum to 1, `"none"` keeps the means.

How a target is predicted (perturbation and gradient): a cell's genes are split into `n_groups` random groups;
each group's values are masked in turn and predicted from the visible rest, so a target is scored against the
regulators outside its own group. The model's `value_baseline` (each gene's mean plus the cell's mean offset over
every visible gene) is left out of the prediction: it moves every target of a cell alike, which is not regulation.
So a pair the model cannot connect (a GRN mask without hops or dense layers, and no `[CLS]` channel reaching the
target) scores exactly 0: by construction for attention and gradients; for perturbation, whose two predictions are
separate forward passes, a change within float32 rounding (16 eps relative) counts as none.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..cells.collators import _pad_cells
from ..cells.config import DataConfig
from ..evaluation.inference import run_batch
from ..model.kernels import FORWARD_AD_ATTENTION, attention_on
from .fields import CellFields, target
from .perturb import _cells, masking_groups, model_prior

EDGE_METHODS = ("perturbation", "gradient", "attention")
ATTENTION_NORMALIZATIONS = ("sinkhorn", "row", "none")
ROUNDING = 16 * torch.finfo(torch.float32).eps  # relative; below it a predicted change is float32 rounding


class _PairTotals:
    """Running sums and counts of a score over (regulator, gene) pairs, indexed by vocabulary id."""

    def __init__(self, regulator_ids, vocab_size: int):
        self.row_of = np.full(vocab_size, -1, dtype=np.int64)
        self.row_of[np.asarray(regulator_ids, dtype=np.int64)] = np.arange(len(regulator_ids))
        self.vocab = vocab_size
        self.sums = np.zeros(len(regulator_ids) * vocab_size)
        self.counts = np.zeros(len(regulator_ids) * vocab_size)

    def add(self, regulators: np.ndarray, targets: np.ndarray, values: np.ndarray) -> None:
        rows = self.row_of[regulators]
        keep = (rows >= 0) & (regulators != targets)
        flat, inverse = np.unique(rows[keep] * self.vocab + targets[keep], return_inverse=True)
        self.sums[flat] += np.bincount(inverse, weights=values[keep])
        self.counts[flat] += np.bincount(inverse)

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (-1, self.vocab)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.sums / self.counts).reshape(shape), self.counts.reshape(shape)


# ---------------------------------------------------------------------------------------------------- masked rows
def _cell_batch(cells: list[dict], n_groups: int, seed, first: int, config) -> dict:
    """Padded tensors of `cells` and each token's masking group (-1 for `[CLS]` and padding)."""
    batch = _pad_cells(cells, config.pad_token_id)
    group_of = torch.full(batch["input_ids"].shape, -1, dtype=torch.long)
    for i, cell in enumerate(cells):
        assignment = masking_groups(cell, n_groups, [seed, first + i])
        group_of[i, 1:len(cell["input_ids"])] = torch.tensor([assignment[int(g)] for g in cell["input_ids"][1:]])
    batch["group_of"] = group_of
    return batch


def _row_plan(batch: dict, regulator_mask: torch.Tensor, n_groups: int, seed, first: int) -> tuple[torch.Tensor, ...]:
    """The rows to predict, as `(cell, group, regulator position)`: per cell one unperturbed row for each group
    (position -1), then one row per regulator of the cell, scored on one group other than its own (drawn per
    cell and regulator, so over the cells every target is scored against every regulator)."""
    cells, groups, positions = [], [], []
    for c in range(batch["input_ids"].shape[0]):
        where = torch.nonzero(regulator_mask[c]).flatten()
        own = batch["group_of"][c, where]
        shift = torch.from_numpy(np.random.default_rng([*np.atleast_1d(seed), first + c, 1]).integers(
            1, n_groups, size=len(where)))
        cells += [c] * (n_groups + len(where))
        groups += [*range(n_groups), *((own + shift) % n_groups).tolist()]
        positions += [-1] * n_groups + where.tolist()
    return torch.tensor(cells), torch.tensor(groups), torch.tensor(positions)


def _rows(batch: dict, cells, groups, positions, config, *, drop: bool) -> dict:
    """The planned rows: the group's values masked and, with `drop`, the regulator's token hidden (attention mask
    0: no token attends to it; its own row is still computed)."""
    masked = batch["group_of"][cells] == groups[:, None]
    out = {"input_ids": batch["input_ids"][cells], "attention_mask": batch["attention_mask"][cells].clone()}
    if "expression_values" in batch:
        out["expression_values"] = batch["expression_values"][cells].masked_fill(masked, config.mask_value)
    if "expression_bins" in batch:
        out["expression_bins"] = batch["expression_bins"][cells].masked_fill(masked, config.n_bins + 1)
    if drop:
        hidden = positions >= 0
        out["attention_mask"][hidden.nonzero()[:, 0], positions[hidden]] = 0
    return out


def _encoder_prediction(model, rows: dict, device) -> torch.Tensor:
    """`(rows, L)` predicted value of every token without the model's `value_baseline` (see the module
    docstring): log1p units for a continuous model, expected bin for a binned one; 0 past a row's last token."""
    width = rows["input_ids"].shape[1]
    rows = {k: v.to(device) for k, v in rows.items()}
    logits = run_batch(model, rows, device=device).logits.float()
    rows = {k: v[:, :logits.shape[1]] for k, v in rows.items()}  # run_batch trims trailing padding
    if model.config.value_encoding == "binned":
        logits = (logits.softmax(-1) * torch.arange(logits.shape[-1], device=logits.device)).sum(-1)
    elif model.config.value_baseline != "none":  # the token head's start (a residual cell decoder is not read)
        logits = logits - model.value_baseline(rows["input_ids"], rows["expression_values"], rows["attention_mask"])
    return torch.nn.functional.pad(logits, (0, width - logits.shape[1]))


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _perturbation_batch(model, batch, plan, totals: _PairTotals, batch_size, device) -> None:
    cells, groups, positions = plan
    predicted = torch.cat([_encoder_prediction(model, _rows(batch, cells[s], groups[s], positions[s], model.config,
                                                            drop=True), device).cpu()
                           for s in _chunks(len(cells), batch_size)])
    n_groups = int(groups.max()) + 1
    base = torch.full((batch["input_ids"].shape[0], n_groups), -1, dtype=torch.long)
    unperturbed = torch.nonzero(positions < 0).flatten()
    base[cells[unperturbed], groups[unperturbed]] = unperturbed
    before = predicted[base[cells, groups]]
    change = predicted - before
    # two forward passes of different batches round differently: a change within float32 rounding is no change
    rounding = ROUNDING * torch.maximum(before.abs(), predicted.abs()).clamp(min=1.0)
    _add_changes(batch, cells, groups, positions, change.masked_fill(change.abs() <= rounding, 0.0), totals,
                 sign=-1.0)


def _gradient_batch(model, batch, plan, totals: _PairTotals, batch_size, device) -> None:
    import torch.autograd.forward_ad as forward_ad

    keep = plan[2] >= 0
    cells, groups, positions = (p[keep] for p in plan)
    outputs = []
    for s in _chunks(len(cells), batch_size):
        rows = _rows(batch, cells[s], groups[s], positions[s], model.config, drop=False)
        tangent = torch.zeros_like(rows["expression_values"])
        rows_index = torch.arange(len(tangent))
        tangent[rows_index, positions[s]] = rows["expression_values"][rows_index, positions[s]]  # input x gradient
        with forward_ad.dual_level():
            rows = {k: v.to(device) for k, v in rows.items()}
            rows["expression_values"] = forward_ad.make_dual(rows["expression_values"], tangent.to(device))
            outputs.append(forward_ad.unpack_dual(_encoder_prediction(model, rows, device)).tangent.cpu())
    if outputs:
        _add_changes(batch, cells, groups, positions, torch.cat(outputs), totals, sign=1.0)


def _add_changes(batch, cells, groups, positions, changes, totals: _PairTotals, *, sign: float) -> None:
    """Add each perturbed row's change at its masked genes to the (regulator, target) totals."""
    ids = batch["input_ids"]
    perturbed = torch.nonzero(positions >= 0).flatten()
    masked = batch["group_of"][cells[perturbed]] == groups[perturbed, None]
    row, column = masked.nonzero(as_tuple=True)
    regulators = ids[cells[perturbed], positions[perturbed]][row]
    targets = ids[cells[perturbed]][row, column]
    values = sign * changes[perturbed][row, column]
    totals.add(regulators.numpy(), targets.numpy(), values.double().numpy())


# ---------------------------------------------------------------------------------------------------- attention
def _attention_batch(model, batch, layer_ids, totals: _PairTotals, device) -> None:
    encoder, config = model.base_model, model.config
    rows = {k: v for k, v in batch.items() if k != "group_of"}
    out = run_batch(encoder, rows, device=device, output_attentions=True)
    weights = torch.stack([out.attentions[i] for i in layer_ids]).float().mean(dim=(0, 2)).cpu()
    ids = batch["input_ids"][:, :weights.shape[1]]
    genes = batch["group_of"][:, :weights.shape[1]] >= 0
    reads_regulators = config.grn_direction != "target_to_regulator"
    pair = genes[:, :, None] & genes[:, None, :]
    query, key = ids[:, :, None].expand_as(pair), ids[:, None, :].expand_as(pair)
    regulators, targets = (key, query) if reads_regulators else (query, key)
    totals.add(regulators[pair].numpy(), targets[pair].numpy(), weights[pair].double().numpy())


def balanced(scores: np.ndarray, normalization: str, *, iterations: int = 50) -> np.ndarray:
    """Regulator x target attention means (NaN: never seen together) balanced as `normalization` says."""
    values = np.nan_to_num(scores, nan=0.0)
    if normalization == "row":  # each target's regulators sum to 1
        return values / np.maximum(values.sum(0, keepdims=True), 1e-12)
    if normalization == "sinkhorn":
        for _ in range(iterations):
            values = values / np.maximum(values.sum(1, keepdims=True), 1e-12)
            values = values / np.maximum(values.sum(0, keepdims=True), 1e-12)
    return values


# ---------------------------------------------------------------------------------------------------- the verb
def _check(model, tokenizer, method: str, normalization: str, n_groups: int) -> None:
    if method not in EDGE_METHODS:
        raise ValueError(f"method={method!r} is not one of {list(EDGE_METHODS)}.")
    if normalization not in ATTENTION_NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not one of {list(ATTENTION_NORMALIZATIONS)}.")
    if method != "attention" and getattr(model, "task", None) != "masked_expression":
        raise ValueError(f"method={method!r} predicts expression: it needs a masked-expression model "
                         "(ScGrnForMaskedExpressionModeling, e.g. a pretrained scgrn folder); method='attention' "
                         "reads any scgrn model.")
    if method == "gradient" and model.config.value_encoding != "continuous":
        raise ValueError("method='gradient' differentiates by the input values: it needs value_encoding="
                         "'continuous' (this model is binned); use method='perturbation'.")
    if int(n_groups) != n_groups or n_groups < 2:
        raise ValueError(f"n_groups={n_groups!r} must be a whole number of masking groups, at least 2.")
    tokenizer.check_matches(model.config)


def _regulators(model, tokenizer, network, regulators) -> tuple[list[str], pd.DataFrame | None]:
    """The regulators to score (given, else the prior's sources) and the prior pairs (`network`, else the
    model's own prior)."""
    prior = network.edges[["source", "target"]] if network is not None else model_prior(model, tokenizer)
    if regulators is None:
        if prior is None:
            raise ValueError("a dense model has no prior to take regulators from: pass network= (e.g. CollecTRI "
                             "as a GeneRegulatoryNetwork) or regulators= (a list of TFs).")
        regulators = pd.unique(prior["source"])
    vocabulary = tokenizer.get_vocab()
    special = set(tokenizer.all_special_tokens)
    known = [str(g) for g in dict.fromkeys(regulators) if g in vocabulary and g not in special]
    if not known:
        raise ValueError("none of the regulators is a gene of the model's vocabulary; pass regulators the model "
                         "knows (or a network on the same gene names).")
    return known, prior


def regulatory_edges(adata, model, tokenizer, *, method: str = "perturbation", network=None, regulators=None,
                     n_groups: int = 7, normalization: str = "sinkhorn", layers=None, max_cells: int | None = None,
                     key_added: str = "scgrn_edges", copy: bool = False, gene_column: str | None = None,
                     layer: str | None = None, normalize: bool = True,
                     max_length: int | None = DataConfig.max_length, batch_size: int = 64, seed: int = 0,
                     device=None, progress: bool = True):
    """Score every regulator -> target pair of genes present together in the cells of `adata` (see the module
    docstring for the three `method`s).

    `model` is a scgrn model (a masked-expression one for `"perturbation"` and `"gradient"`), `tokenizer` its
    tokenizer; `adata` holds raw counts (or normalised values with `normalize=False`), read as every `tl` verb
    reads them (`gene_column`, `layer`, `normalize`, `max_length`). `regulators` are the genes scored as sources
    (default: the sources of `network`, else of the model's own prior; a dense model needs one of them); `in_prior`
    flags pairs of `network` (a `GeneRegulatoryNetwork`), else of the model's prior. `max_cells` scores a seeded
    sample of the cells; `n_groups` masking groups per cell (perturbation, gradient); `normalization` and `layers`
    (block indices, default all) for attention.

    Returns a DataFrame (with `copy=True`: the AnnData copy written into) sorted by |weight|: `source`, `target`,
    `weight` (signed for perturbation and gradient, positive = activation), `in_prior`, `cells` (cells in which
    the pair was scored) and `method`. Sets `adata.uns[key_added]`: `edges` (the table), `method`, `units` and
    `params`.
    """
    from tqdm.auto import tqdm

    _check(model, tokenizer, method, normalization, n_groups)
    names, prior = _regulators(model, tokenizer, network, regulators)
    adata, fields = target(adata, copy), CellFields(gene_column, layer, normalize, max_length)
    device = device or next(model.parameters()).device
    cells = _cells(adata, tokenizer, fields)
    if max_cells is not None and len(cells) > max_cells:
        cells = [cells[i] for i in np.sort(np.random.default_rng(seed).permutation(len(cells))[:max_cells])]
    regulator_ids = tokenizer.convert_tokens_to_ids(names)
    totals = _PairTotals(regulator_ids, model.config.vocab_size)
    is_regulator = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    is_regulator[regulator_ids] = True
    layer_ids = list(range(model.config.num_hidden_layers)) if layers is None else list(layers)
    cells_per_step = batch_size if method == "attention" else max(1, batch_size // 16)
    previous = model.config._attn_implementation
    if method == "attention" or (method == "gradient" and attention_on(previous, device) not in FORWARD_AD_ATTENTION):
        model.set_attn_implementation("eager")  # probabilities, or forward-mode derivatives (flex and sdpa have none)
    try:
        for start in tqdm(range(0, len(cells), cells_per_step), desc=f"edges ({method})", unit="step",
                          disable=not progress):
            batch = _cell_batch(cells[start:start + cells_per_step], n_groups, seed, start, model.config)
            if method == "attention":
                _attention_batch(model, batch, layer_ids, totals, device)
                continue
            plan = _row_plan(batch, is_regulator[batch["input_ids"]] & (batch["group_of"] >= 0), n_groups, seed,
                             start)
            score = _perturbation_batch if method == "perturbation" else _gradient_batch
            score(model, batch, plan, totals, batch_size, device)
    finally:
        model.set_attn_implementation(previous)
    frame = _edge_table(adata, tokenizer, model, names, totals, prior, method, normalization, fields)
    adata.uns[key_added] = {"edges": frame, "method": method, "units": _units(model, method),
                            "params": fields.params(model, method=method, n_groups=n_groups, seed=seed,
                                                    normalization=normalization, cells=len(cells))}
    return adata if copy else frame


def _units(model, method: str) -> str:
    if method == "attention":
        return "attention probability, balanced"
    if model.config.value_encoding == "binned":
        return "expected bin"
    return "log2 fold change of (1 + normalised value)" if method == "perturbation" else "log1p value x log1p value"


def _edge_table(adata, tokenizer, model, names, totals: _PairTotals, prior, method, normalization, fields):
    means, counts = totals.means()
    if method == "attention":
        means = balanced(means, normalization)
    elif method == "perturbation" and model.config.value_encoding != "binned":
        means = means / math.log(2)
    vocabulary = tokenizer.get_vocab()
    present = [g for g in dict.fromkeys(fields.gene_names(adata)) if g in vocabulary]
    columns = np.asarray(tokenizer.convert_tokens_to_ids(present))
    rows, cols = np.nonzero(counts[:, columns] > 0)
    frame = pd.DataFrame({"source": np.asarray(names, dtype=object)[rows],
                          "target": np.asarray(present, dtype=object)[cols],
                          "weight": np.nan_to_num(means[:, columns][rows, cols]),
                          "cells": counts[:, columns][rows, cols].astype(np.int64)})
    pairs = set() if prior is None else set(zip(prior["source"], prior["target"]))
    frame.insert(3, "in_prior", [pair in pairs for pair in zip(frame["source"], frame["target"])])
    frame["method"] = method
    order = np.lexsort((frame["target"].to_numpy(), frame["source"].to_numpy(), -frame["weight"].abs().to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def plot_regulons(edges: pd.DataFrame, path, *, top: int = 12, targets: int = 10) -> None:
    """PNG: the `top` regulators with the largest summed |weight|, each a panel of its `targets` strongest targets
    (bar = weight; filled: in the prior, hollow: not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if edges.empty:
        raise ValueError("the edge table is empty: no regulator and target were present together in any cell.")
    strength = edges.assign(size=edges["weight"].abs()).groupby("source")["size"].sum()
    chosen = strength.sort_values(ascending=False, kind="stable").index[:top]
    columns = min(4, len(chosen))
    rows = -(-len(chosen) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    for axis in axes.ravel()[len(chosen):]:
        axis.axis("off")
    for axis, regulator in zip(axes.ravel(), chosen):
        regulon = edges[edges["source"] == regulator]
        regulon = regulon.iloc[np.argsort(-regulon["weight"].abs().to_numpy(), kind="stable")[:targets]]
        colours = ["tab:red" if w > 0 else "tab:blue" for w in regulon["weight"]]
        bars = axis.barh(range(len(regulon)), regulon["weight"], color=colours, edgecolor=colours)
        for bar, in_prior in zip(bars, regulon["in_prior"]):
            if not in_prior:
                bar.set_facecolor("none")
        axis.set_yticks(range(len(regulon)), regulon["target"], fontsize=6)
        axis.invert_yaxis()
        axis.axvline(0, color="k", linewidth=0.5)
        axis.set_title(regulator, fontsize=8)
        axis.tick_params(axis="x", labelsize=6)
    figure.suptitle(f"top regulons ({edges['method'].iloc[0]}; filled: prior edge, hollow: not in the prior)",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
