"""In-silico perturbation: knock a gene out of a cell's input (or up to the cell's top value), predict every other
gene with the masked-expression head, and compare with the unperturbed prediction; also where the cell embedding
and, with a classifier, the predicted cell type move.

    from modeling_scgrn.tl import perturb
    effects = perturb(adata, model, tokenizer, ["SPI1", "CEBPB"], mode="delete")   # genes x genes DataFrame

How a cell is predicted: its genes (all but `[CLS]` and the perturbed gene) are split into `n_groups` groups; each
group's values are masked in turn (the rest stay visible) and the head predicts them, so every gene is predicted
once from the others, in the perturbed and in the unperturbed cell, with the same groups. A continuous model
predicts log1p-normalised values: the effect is their difference in log2 units (log2 fold change of 1 + the
normalised value); a binned model predicts bins: the effect is the change of the expected bin. A model with a
`value_baseline` starts each prediction from the gene's mean plus the cell's offset over its visible genes; the
perturbed cell keeps its unperturbed offset (deleting a gene does not change how deeply the cell was sequenced), so
that a GRN model moves only what its prior reaches.

A cascade (`rounds` > 1): one prediction moves only what the model reaches in one pass from the perturbed gene
(with a GRN mask and no `[CLS]` channel, at most `num_hidden_layers` prior edges away), and the intermediate
regulators keep their observed values. So the predicted changes are fed back: each gene's input becomes its
value in the perturbed cell plus its predicted change, and the cell is predicted again, until `rounds` passes or
until no prediction moves by `tolerance`. The first pass's effects (direct) are kept beside the final ones, with
each gene's distance from the perturbed gene in the model's prior.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from ..cells.collators import _pad, _pad_cells
from ..cells.config import SEQUENCE_COLUMNS, DataConfig
from ..evaluation.inference import run_batch
from ..grn.network import downstream
from ..options.arguments import PERTURBATION_MODES
from .fields import CellFields, target



def _cells(adata, tokenizer, fields: CellFields) -> list[dict]:
    """Each cell's tokens as numpy arrays (`[CLS]` first, no padding)."""
    cells = []
    for encoded in fields.encode(adata, tokenizer, return_tensors="np"):
        lengths = encoded["attention_mask"].sum(1)
        columns = [c for c in SEQUENCE_COLUMNS if c in encoded]
        cells += [{c: np.asarray(encoded[c][i, :n]) for c in columns} for i, n in enumerate(lengths)]
    return cells


def _perturbed(cell: dict, gene_id: int, mode: str, n_bins: int | None) -> dict | None:
    """The cell with `gene_id` deleted (None when the cell lacks it) or set to the cell's top value and bin."""
    where = np.flatnonzero(cell["input_ids"] == gene_id)
    if mode == "delete":
        if where.size == 0:
            return None
        return {k: np.delete(v, where) for k, v in cell.items()}
    top = {"expression_values": cell["expression_values"][1:].max(initial=0.0), "expression_bins": n_bins}
    if where.size:
        out = {k: v.copy() for k, v in cell.items()}
        for key in ("expression_values", "expression_bins"):
            if key in out:
                out[key][where] = top[key]
        return out
    return {k: np.append(v, gene_id if k == "input_ids" else top[k]).astype(v.dtype) for k, v in cell.items()}


def masking_groups(cell: dict, n_groups: int, seed) -> dict[int, int]:
    """gene id -> masking group for one cell (a random, balanced split); a perturbed copy of the cell reuses it."""
    ids = cell["input_ids"][1:]
    order = np.random.default_rng(seed).permutation(len(ids))
    return {int(ids[i]): rank % n_groups for rank, i in enumerate(order)}


def _masked_inputs(cells: list[dict], groups: list[dict], n_groups: int, config) -> tuple[dict, torch.Tensor]:
    """One padded batch holding every (cell, group) pair with that group's values masked; and which positions."""
    rows, masks = [], []
    for cell, assignment in zip(cells, groups):
        group_of = np.array([-1] + [assignment.get(int(i), -1) for i in cell["input_ids"][1:]])
        for group in range(n_groups):
            masked = group_of == group
            row = dict(cell)
            if "expression_values" in row:
                row["expression_values"] = np.where(masked, config.mask_value, row["expression_values"])
            if "expression_bins" in row:
                row["expression_bins"] = np.where(masked, config.n_bins + 1, row["expression_bins"])
            rows.append(row)
            masks.append(masked)
    return _pad_cells(rows, config.pad_token_id), _pad(masks, False, torch.bool)


def cell_offsets(model, cells: list[dict], groups: list[dict], n_groups: int) -> torch.Tensor | None:
    """`(cells * n_groups,)` the `value_baseline` offset of every masked row `predicted_expression` builds (rows in
    its order); None for a model without one."""
    if model.config.value_baseline == "none":
        return None
    return _row_offsets(model, _masked_inputs(cells, groups, n_groups, model.config)[0])


def _row_offsets(model, batch: dict) -> torch.Tensor:
    device = model.gene_means.device
    with torch.no_grad():
        return model.cell_offset(*(batch[k].to(device) for k in ("input_ids", "expression_values",
                                                                  "attention_mask"))).float().cpu()


def predicted_expression(model, cells: list[dict], *, n_groups: int = 7, seed: int = 0, groups=None,
                         offsets: torch.Tensor | None = None, device=None) -> list[dict[int, float]]:
    """Each gene of each cell predicted by the masked-expression head from the cell's other genes (see the module
    docstring): per cell, `{gene id: predicted value}` (log1p value, or expected bin for a binned model).

    `offsets` (`cell_offsets` of other cells with the same genes masked, e.g. the unperturbed ones): a model with a
    `value_baseline` predicts with these cell offsets instead of the rows' own."""
    config = model.config
    device = device or next(model.parameters()).device
    groups = groups or [masking_groups(cell, n_groups, [seed, i]) for i, cell in enumerate(cells)]
    batch, positions = _masked_inputs(cells, groups, n_groups, config)
    logits = run_batch(model, batch, device=device).logits.float().cpu()
    if offsets is not None and config.value_baseline != "none":
        logits = logits + (offsets.float() - _row_offsets(model, batch))[:, None]
    if config.value_encoding == "binned":
        logits = (logits.softmax(-1) * torch.arange(logits.shape[-1], dtype=torch.float32)).sum(-1)
    out = []
    for c in range(len(cells)):
        rows = slice(c * n_groups, (c + 1) * n_groups)
        ids, values, where = batch["input_ids"][rows], logits[rows], positions[rows]
        out.append(dict(zip(ids[where].tolist(), values[where].tolist())))
    return out


def _fed_back(cell: dict, control: dict, predicted: dict, config) -> dict:
    """The perturbed `cell` with each gene's input moved by its predicted change (`predicted - control`): log1p
    values for a continuous model (kept at 0 or above), bins for a binned one (rounded into `[1, n_bins]`)."""
    change = np.array([predicted.get(g, 0.0) - control[g] if g in control else 0.0
                       for g in map(int, cell["input_ids"][1:])])
    out = dict(cell)
    if config.value_encoding == "binned":
        column, moved = "expression_bins", np.clip(np.rint(cell["expression_bins"][1:] + change), 1, config.n_bins)
    else:
        column, moved = "expression_values", np.maximum(cell["expression_values"][1:] + change, 0.0)
    out[column] = np.concatenate([cell[column][:1], moved]).astype(cell[column].dtype)  # [CLS] as it was
    return out


def cascade_predictions(model, cells: list[dict], control: list[dict], groups: list[dict], *, rounds: int = 1,
                        tolerance: float = 1e-3, n_groups: int = 7, offsets: torch.Tensor | None = None,
                        device=None):
    """Predictions of the perturbed `cells` (with their unperturbed `control` predictions, masking `groups` and,
    for a model with a `value_baseline`, the control's `cell_offsets`, held in every pass), fed back up to
    `rounds` times (see the module docstring). Returns `(final, first, rounds_run)`: per cell `{gene id:
    predicted value}` after the last and after the first pass, and the number of passes made."""
    predicted = predicted_expression(model, cells, n_groups=n_groups, groups=groups, offsets=offsets, device=device)
    first, passes = predicted, 1
    while passes < rounds:
        moved_cells = [_fed_back(c, before, after, model.config) for c, before, after in zip(cells, control, predicted)]
        again = predicted_expression(model, moved_cells, n_groups=n_groups, groups=groups, offsets=offsets,
                                     device=device)
        moved = max((abs(a[g] - p[g]) for a, p in zip(again, predicted) for g in a), default=0.0)
        predicted, passes = again, passes + 1
        if moved < tolerance:
            break
    return predicted, first, passes


def model_prior(model, tokenizer) -> pd.DataFrame | None:
    """A model's own prior as `source, target` gene names (the edges its mask holds); None for a dense model."""
    if model.config.grn_mode == "dense":
        return None
    regulators, targets = model.base_model.grn_edges.cpu().numpy()
    return pd.DataFrame({"source": tokenizer.convert_ids_to_tokens(regulators.tolist()),
                         "target": tokenizer.convert_ids_to_tokens(targets.tolist())})


def prior_distance(model, tokenizer, genes, columns) -> pd.DataFrame | None:
    """`(genes, columns)` number of the model's prior edges (regulator -> target, as its mask holds them) from each
    perturbed gene to each gene: 1 a direct target, 2 or more an indirect one, NaN out of reach; None for a model
    without a prior (`grn_mode="dense"`)."""
    prior = model_prior(model, tokenizer)
    if prior is None:
        return None
    rows = [[downstream(prior, gene).get(c, np.nan) for c in columns] for gene in genes]
    return pd.DataFrame(rows, index=list(genes), columns=list(columns), dtype=float)


def _embeddings(encoder, cells: list[dict], device) -> torch.Tensor:
    batch = _pad_cells(cells, encoder.config.pad_token_id)
    return run_batch(encoder, batch, device=device).pooler_output.float().cpu()


def _classify(classifier, cells: list[dict], device) -> np.ndarray:
    batch = _pad_cells(cells, classifier.config.pad_token_id)
    return run_batch(classifier, batch, device=device).logits.argmax(-1).cpu().numpy()


def _check(model, tokenizer, genes, mode: str, classifier) -> list[int]:
    if mode not in PERTURBATION_MODES:
        raise ValueError(f"mode={mode!r} is not one of {list(PERTURBATION_MODES)}.")
    if getattr(model, "task", None) != "masked_expression":
        raise ValueError("perturb needs a masked-expression model (ScGrnForMaskedExpressionModeling, e.g. a "
                         "pretrained scgrn folder) to predict expression.")
    if classifier is not None and getattr(classifier, "task", None) != "cell_classification":
        raise ValueError("classifier= must be a cell classifier (ScGrnForCellClassification).")
    for paired in (model, classifier):
        if paired is not None:
            tokenizer.check_matches(paired.config)
    special = [g for g in genes if g in tokenizer.all_special_tokens]
    if special:
        raise ValueError(f"{special} are special tokens, not genes; perturb genes the model knows.")
    vocabulary = tokenizer.get_vocab()
    unknown = [g for g in genes if g not in vocabulary]
    if unknown:
        raise ValueError(f"{unknown} are not in the model's vocabulary; perturb genes the model knows.")
    return tokenizer.convert_tokens_to_ids(list(genes))


class _Tally:
    """Running sums of predicted changes (perturbed gene x vocabulary), embedding shifts and label moves."""

    def __init__(self, n_genes: int, vocab: int, n_cells: int):
        self.sums, self.counts = np.zeros((n_genes, vocab)), np.zeros((n_genes, vocab))
        self.first_sums = np.zeros((n_genes, vocab))
        self.rounds_run = 0
        self.shift = np.full((n_cells, n_genes), np.nan, dtype=np.float32)
        self.label = np.full((n_cells, n_genes), -1, dtype=np.int64)

    def add(self, j: int, gene_id: int, control: dict, perturbed: dict, first: dict) -> None:
        shared = [g for g in perturbed if g in control and g != gene_id]
        self.sums[j, shared] += np.array([perturbed[g] - control[g] for g in shared])
        self.first_sums[j, shared] += np.array([first[g] - control[g] for g in shared])
        self.counts[j, shared] += 1


def perturb(adata, model, tokenizer, genes, mode: str = "delete", *, classifier=None, n_groups: int = 7,
            rounds: int = 1, tolerance: float = 1e-3, key_added: str = "scgrn_perturbation", copy: bool = False,
            gene_column: str | None = None, layer: str | None = None, normalize: bool = True,
            max_length: int | None = DataConfig.max_length, batch_size: int = 16, seed: int = 0, device=None,
            progress: bool = True):
    """Predict what deleting (or overexpressing) each of `genes` does to every other gene, cell by cell.

    `model` is a masked-expression scgrn model (a pretrained folder), `tokenizer` its tokenizer; `adata` holds raw
    counts (or normalised values with `normalize=False`). `delete` removes the gene's token from the cells that
    express it (others are untouched); `overexpress` sets it to the cell's top value and bin (adding it where
    absent). With `classifier` (a finetuned `ScGrnForCellClassification` on the same vocabulary), the predicted
    cell type before and after is compared too. `rounds` > 1 follows a cascade: the predicted changes are fed back
    as inputs and the cells predicted again, up to `rounds` passes or until no prediction moves by `tolerance`
    (log1p units, or bins), so that indirect targets can move (see the module docstring).

    Returns a DataFrame (with `copy=True`: the AnnData copy written into): index the perturbed genes, columns the
    vocabulary genes of `adata`, values the mean predicted change over the perturbed cells that hold the gene (log2
    fold change of 1 + normalised value for a continuous model; expected-bin change for a binned one); NaN where no
    such cell. The genes and values are read as every `tl` verb reads them (`gene_column`, `layer`, `normalize`).

    Sets the following fields:
        `adata.uns[key_added]`: `params` (the call's), `effects` (the DataFrame), `mode`, `units`,
            `cells_perturbed` (per gene), `rounds` (passes made, at most `rounds`), `first_round` (the effects
            of the first pass: what one prediction moves), `prior_distance` (perturbed genes x genes: edges of the
            model's prior from the perturbed gene, 1 direct, 2+ indirect, NaN out of reach; absent for a
            dense model),
            `embedding_shift` (cells x genes cosine distance of the cell embedding; NaN where not perturbed) and,
            with a classifier, `label_moves` (genes x cell types: perturbed cells newly predicted as that type)
            and `label_changed` (per gene, share of perturbed cells whose predicted type changed).
    """
    from tqdm.auto import tqdm

    gene_ids = _check(model, tokenizer, genes, mode, classifier)
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be a whole number of passes, at least 1.")
    adata, fields = target(adata, copy), CellFields(gene_column, layer, normalize, max_length)
    device = device or next(model.parameters()).device
    cells = _cells(adata, tokenizer, fields)
    tally = _Tally(len(gene_ids), model.config.vocab_size, len(cells))
    base_label = np.full(len(cells), -1)
    for start in tqdm(range(0, len(cells), batch_size), desc="perturbing", unit="batch", disable=not progress):
        chunk = cells[start:start + batch_size]
        groups = [masking_groups(cell, n_groups, [seed, start + i]) for i, cell in enumerate(chunk)]
        control = predicted_expression(model, chunk, n_groups=n_groups, groups=groups, device=device)
        offsets = cell_offsets(model, chunk, groups, n_groups)  # a deletion does not change the cell's depth
        control_embedding = _embeddings(model.base_model, chunk, device)
        if classifier is not None:
            base_label[start:start + len(chunk)] = _classify(classifier, chunk, device)
        for j, gene_id in enumerate(gene_ids):
            changed = [(i, p) for i, p in enumerate(_perturbed(c, gene_id, mode, model.config.n_bins) for c in chunk)
                       if p is not None]
            if not changed:
                continue
            rows, perturbed = [i for i, _ in changed], [p for _, p in changed]
            held = None if offsets is None else offsets.view(len(chunk), n_groups)[rows].flatten()
            predicted, first, passes = cascade_predictions(
                model, perturbed, [control[i] for i in rows], [groups[i] for i in rows], rounds=int(rounds),
                tolerance=tolerance, n_groups=n_groups, offsets=held, device=device)
            tally.rounds_run = max(tally.rounds_run, passes)
            for i, values, once in zip(rows, predicted, first):
                tally.add(j, gene_id, control[i], values, once)
            shift = 1 - torch.nn.functional.cosine_similarity(_embeddings(model.base_model, perturbed, device),
                                                              control_embedding[rows])
            tally.shift[[start + i for i in rows], j] = shift.numpy()
            if classifier is not None:
                tally.label[[start + i for i in rows], j] = _classify(classifier, perturbed, device)
    effects = _write_perturbation(adata, tokenizer, model, list(genes), mode, tally, base_label, classifier, key_added)
    adata.uns[key_added]["params"] = fields.params(model, mode=mode, n_groups=n_groups, seed=seed, rounds=int(rounds),
                                                   tolerance=tolerance)
    return adata if copy else effects


def _write_perturbation(adata, tokenizer, model, genes, mode, tally: _Tally, base_label, classifier, key_added):
    continuous = model.config.value_encoding != "binned"
    scale = 1 / math.log(2) if continuous else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        means, first = tally.sums / tally.counts * scale, tally.first_sums / tally.counts * scale
    vocabulary = tokenizer.get_vocab()
    present = [g for g in dict.fromkeys(adata.var_names) if g in vocabulary]
    columns = tokenizer.convert_tokens_to_ids(present)
    effects = pd.DataFrame(means[:, columns], index=genes, columns=present)
    perturbed = ~np.isnan(tally.shift)
    result = {"effects": effects, "mode": mode, "rounds": int(tally.rounds_run),
              "first_round": pd.DataFrame(first[:, columns], index=genes, columns=present),
              "units": "log2 fold change of (1 + normalised value)" if continuous else "expected bin",
              "cells_perturbed": dict(zip(genes, perturbed.sum(0).tolist())),
              "embedding_shift": pd.DataFrame(tally.shift, index=adata.obs_names, columns=genes)}
    distance = prior_distance(model, tokenizer, genes, present)
    if distance is not None:  # h5ad cannot store None
        result["prior_distance"] = distance
    if classifier is not None:
        classes = [classifier.config.id2label[i] for i in range(classifier.config.num_labels)]
        moved = perturbed & (tally.label != base_label[:, None])
        result["label_changed"] = dict(zip(genes, (moved.sum(0) / np.maximum(perturbed.sum(0), 1)).tolist()))
        result["label_moves"] = pd.DataFrame(
            [[int((moved[:, j] & (tally.label[:, j] == c)).sum()) for c in range(len(classes))]
             for j in range(len(genes))], index=genes, columns=classes)
    adata.uns[key_added] = result
    return effects


def plot_effects(effects: pd.DataFrame, path, *, top: int = 25, units: str = "") -> None:
    """Heat map of perturbed genes x the `top` genes with the largest predicted change (by max |effect|)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strongest = effects.abs().max(axis=0).dropna().sort_values(ascending=False).index[:top]
    shown = effects[strongest]
    limit = float(np.nanmax(np.abs(shown.to_numpy()))) if shown.size else 1.0
    figure, axis = plt.subplots(figsize=(max(6, 0.3 * len(strongest) + 2), max(2.5, 0.4 * len(effects) + 1.5)))
    image = axis.imshow(shown.to_numpy(dtype=float), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(len(strongest)), strongest, rotation=90, fontsize=7)
    axis.set_yticks(range(len(effects)), effects.index, fontsize=8)
    axis.set_xlabel("most affected genes")
    axis.set_ylabel("perturbed gene")
    figure.colorbar(image, ax=axis, label=units)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def regulon_enrichment(effects: pd.DataFrame, network, *, top: int = 20, permutations: int = 10_000,
                       seed: int = 0) -> dict:
    """Are a perturbed regulator's top predicted targets (largest |effect|) in its regulon (`network`'s targets of
    it) beyond chance? Per perturbed gene that `network` lists as a regulator: the overlap among the `top` genes,
    what random gene sets of the same size drawn from the scored genes give (mean), and a one-sided permutation
    p-value ((hits + 1) / (permutations + 1))."""
    rng = np.random.default_rng(seed)
    result = {}
    for gene in effects.index:
        scored = effects.loc[gene].drop(gene, errors="ignore").dropna()
        regulon = set(network.edges.loc[network.edges["source"] == gene, "target"]) & set(scored.index)
        if not regulon or len(scored) <= top:
            continue
        chosen = scored.abs().sort_values(ascending=False, kind="stable").index[:top]
        observed = len(regulon & set(chosen))
        members = scored.index.isin(list(regulon))
        draws = np.array([members[rng.permutation(len(scored))[:top]].sum() for _ in range(permutations)])
        result[gene] = {"regulon_size_in_panel": len(regulon), "scored_genes": int(len(scored)), "top": top,
                        "regulon_in_top": observed, "expected_by_chance": float(draws.mean()),
                        "p_value": float(((draws >= observed).sum() + 1) / (permutations + 1))}
    return result
