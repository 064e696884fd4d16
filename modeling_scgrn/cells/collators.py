"""Batches of tokenized cells: padding to the batch's longest cell, masking expression values for pretraining,
integer labels (and class weights) for cell-type finetuning."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_MASK_PROBABILITY = 0.15  # share of gene values hidden in pretraining: the collator's and TrainingConfig's
TOKEN_KEYS = ("input_ids", "attention_mask", "expression_values", "expression_bins")  # a batch's per-token entries


def _pad(sequences, value, dtype) -> torch.Tensor:
    length = max(len(s) for s in sequences)
    out = torch.full((len(sequences), length), value, dtype=dtype)
    for i, sequence in enumerate(sequences):
        out[i, : len(sequence)] = torch.as_tensor(sequence, dtype=dtype)
    return out


def _pad_cells(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    batch = {"input_ids": _pad([f["input_ids"] for f in features], pad_token_id, torch.long)}
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1])[None] < lengths[:, None]).long()
    if "expression_values" in features[0]:
        batch["expression_values"] = _pad([f["expression_values"] for f in features], 0.0, torch.float32)
    if "expression_bins" in features[0]:
        batch["expression_bins"] = _pad([f["expression_bins"] for f in features], 0, torch.long)
    return batch


def gene_tokens(attention_mask: torch.Tensor) -> torch.Tensor:
    """Where a padded batch holds gene tokens: its attention mask without `[CLS]` (the first place)."""
    genes = attention_mask.bool().clone()
    genes[:, 0] = False
    return genes


def check_view_spread(view_gene_dropout: float, view_dropout_spread: float) -> None:
    """Refuse a spread that would draw a view's share of genes left out below 0 or at 1 or above."""
    share, spread = view_gene_dropout, view_dropout_spread
    if spread and not 0 <= share - spread <= share + spread < 1:
        raise ValueError(f"view_dropout_spread={spread} around view_gene_dropout={share} draws shares from "
                         f"{share - spread:g} to {share + spread:g}; keep them in [0, 1).")


def drop_gene_tokens(batch: dict[str, torch.Tensor], share: float, draw: torch.Tensor,
                     pad_token_id: int) -> dict[str, torch.Tensor]:
    """Each row of a padded batch without the gene tokens whose `draw` (uniform, the batch's shape) is below `share`
    (`[CLS]` and at least one gene, the highest draw, always stay): the kept tokens move up in their order, the
    freed places become padding and the batch is cut to its longest row. Per-cell entries (labels, class weights,
    `cell_index`) pass unchanged."""
    kept = batch["attention_mask"].bool()
    genes = gene_tokens(batch["attention_mask"])
    dropped = genes & (draw < share)
    keep_one = torch.where(genes, draw, torch.full_like(draw, -1.0)).argmax(1)
    dropped[torch.arange(len(dropped), device=kept.device), keep_one] = False
    kept &= ~dropped
    positions = torch.arange(kept.shape[1], device=kept.device)
    order = torch.where(kept, positions, positions + kept.shape[1]).argsort(1)
    length = int(kept.sum(1).max())
    out = {key: value.gather(1, order[:, :length]) if key in TOKEN_KEYS else value for key, value in batch.items()}
    out["attention_mask"] = (positions[:length][None] < kept.sum(1)[:, None]).long()
    padding = out["attention_mask"] == 0
    out["input_ids"] = out["input_ids"].masked_fill(padding, pad_token_id)
    for key in ("expression_values", "expression_bins"):
        if key in out:
            out[key] = out[key].masked_fill(padding, 0)
    return out


@dataclass
class DataCollatorForMaskedExpression:
    """Pads to the batch's longest cell and hides the expression of a random `mask_probability` share of gene
    tokens (never `[CLS]` or padding; at least one gene per cell). Masked bins become `n_bins + 1`, masked values
    `mask_value`. `labels` hold the true bins (-100 elsewhere) or true values (NaN elsewhere). With `views=2` every
    cell appears twice, masked independently (rows `i` and `i + batch`), and `cell_index` says which cell each row
    is, for the model's contrastive term (`from_config` chooses 2 when the config has one). `view_gene_dropout`
    also removes that share of each view's gene tokens (drawn per view; the rest move up, the row is re-padded), so
    that two views differ in which genes they show, not only in which values are hidden; `view_dropout_spread`
    draws each view's share uniformly within that distance of it, so that they also show different numbers of genes
    (and the term cannot match views by how many genes a cell has); `view_depth_jitter` re-normalises each view's
    values to another total (continuous values only), so that they cannot match views by the values depth sets;
    `view_complementary` makes the second view leave out the genes the first shows (at `view_gene_dropout` 0.5 the
    two views are disjoint halves of the cell), so that they cannot match views by the genes they share.
    `cell_genes` (`from_config` sets it for a model with a gene-detection decoder) adds each row's cell's token ids
    before any view leaves genes out, the decoder's targets; `view_gene_dropout` then leaves genes out of single
    views too, so that the decoder has hidden genes to find.

    Calling it does both (as transformers' collators do, e.g. for `Trainer`). The scgrn training loop calls
    `pad` in the DataLoader and `mask` just before each step instead, so the random draws follow the step order
    and a resumed run masks exactly as an uninterrupted one (DataLoaders prefetch, which would otherwise consume
    the random state of batches not yet trained on)."""

    pad_token_id: int
    value_encoding: str
    n_bins: int
    mask_value: float = -1.0
    mask_probability: float = DEFAULT_MASK_PROBABILITY
    generator: torch.Generator | None = None
    views: int = 1
    view_gene_dropout: float = 0.0
    view_dropout_spread: float = 0.0
    view_depth_jitter: float = 0.0
    view_complementary: bool = False
    cell_genes: bool = False

    def __post_init__(self):
        check_view_spread(self.view_gene_dropout, self.view_dropout_spread)
        if self.view_complementary and not (self.views == 2 and self.view_gene_dropout > 0):
            raise ValueError(f"view_complementary splits the genes that view_gene_dropout leaves out between two "
                             f"views, but views={self.views} and view_gene_dropout={self.view_gene_dropout}; give "
                             "the model a contrastive term and view_gene_dropout > 0 (0.5: two disjoint halves).")
        if self.view_depth_jitter and self.value_encoding != "continuous":
            raise ValueError(f"view_depth_jitter={self.view_depth_jitter} rescales continuous values, but these are "
                             f"{self.value_encoding}; set it to 0.")

    @classmethod
    def from_config(cls, config, mask_probability: float = DEFAULT_MASK_PROBABILITY, seed: int | None = None,
                    views: int | None = None, view_gene_dropout: float = 0.0, view_dropout_spread: float = 0.0,
                    view_depth_jitter: float = 0.0, view_complementary: bool = False):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        views = (2 if getattr(config, "contrastive_weight", 0) > 0 else 1) if views is None else views
        return cls(config.pad_token_id, config.value_encoding, config.n_bins, config.mask_value, mask_probability,
                   generator, views, view_gene_dropout, view_dropout_spread, view_depth_jitter, view_complementary,
                   cell_genes=getattr(config, "detection_weight", 0) > 0)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.mask(self.pad(features))

    def pad(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return _pad_cells(features, self.pad_token_id)

    def _draw(self, shape, device) -> torch.Tensor:
        if self.generator is None:
            return torch.rand(shape, device=device)
        return torch.rand(shape, generator=self.generator).to(device)

    def _drop_genes(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        device, shape = batch["input_ids"].device, batch["attention_mask"].shape
        share = self.view_gene_dropout
        if self.view_dropout_spread > 0:  # each view its own share: views of one cell show different gene counts
            share = share + self.view_dropout_spread * (2 * self._draw((shape[0], 1), device) - 1)
        draw = self._draw(shape, device)
        if self.view_complementary:  # the second view's draws mirror the first's: it leaves out what that one shows
            cells = shape[0] // 2
            draw = torch.cat([draw[:cells], 1 - draw[:cells]])
        return drop_gene_tokens(batch, share, draw, self.pad_token_id)

    def _jitter_depth(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each view's log1p-normalised values as if the cell had been normalised to another total: `log1p(expm1(v)
        * c)` with `log c` uniform in `[-view_depth_jitter, view_depth_jitter]`, one `c` per view, so that the two
        views of a cell no longer agree on the values its depth sets (a count of 1 is `log1p(target_sum / total)`)."""
        values = batch["expression_values"]
        scale = torch.exp(self.view_depth_jitter * (2 * self._draw((len(values), 1), values.device) - 1))
        genes = gene_tokens(batch["attention_mask"])
        rescaled = torch.log1p(torch.expm1(values) * scale)
        return {**batch, "expression_values": torch.where(genes, rescaled, values)}

    def mask(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mask a padded batch (on any device); draws from `generator` or, without one, torch's global RNG."""
        batch = dict(batch)
        if self.views > 1:
            cells = len(batch["input_ids"])
            batch = {key: value.repeat(self.views, *[1] * (value.dim() - 1)) for key, value in batch.items()}
            batch["cell_index"] = torch.arange(cells, device=batch["input_ids"].device).repeat(self.views)
        if self.cell_genes:
            batch["cell_genes"] = batch["input_ids"].clone()
        if self.view_gene_dropout > 0 and (self.views > 1 or self.cell_genes):
            batch = self._drop_genes(batch)
        if self.views > 1 and self.view_depth_jitter > 0:
            batch = self._jitter_depth(batch)
        genes = gene_tokens(batch["attention_mask"])
        draw = self._draw(genes.shape, genes.device)
        masked = (draw < self.mask_probability) & genes
        # at least one gene per cell (its lowest draw) is masked, so every cell contributes to the loss
        forced = torch.where(genes, draw, torch.full_like(draw, 2.0)).argmin(1)
        has_gene = genes.any(1)
        masked[has_gene, forced[has_gene]] = True
        if self.value_encoding == "binned":
            labels = torch.where(masked, batch["expression_bins"], torch.full_like(batch["expression_bins"], -100))
            batch["expression_bins"] = batch["expression_bins"].masked_fill(masked, self.n_bins + 1)
        else:
            labels = torch.where(masked, batch["expression_values"], torch.full_like(batch["expression_values"], float("nan")))
            batch["expression_values"] = batch["expression_values"].masked_fill(masked, self.mask_value)
        batch["labels"] = labels
        return batch


@dataclass
class DataCollatorForCellClassification:
    """Pads to the batch's longest cell and stacks integer `labels` (from the `label_column` via `label2id`)."""

    pad_token_id: int
    label2id: dict[str, int] | None = None
    label_column: str = "labels"

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = _pad_cells(features, self.pad_token_id)
        if self.label_column in features[0]:
            raw = [f[self.label_column] for f in features]
            if self.label2id is not None:
                unknown = sorted({str(r) for r in raw} - set(self.label2id))
                if unknown:
                    raise ValueError(f"labels {unknown} are not among the model's classes {list(self.label2id)}.")
                raw = [self.label2id[str(r)] for r in raw]
            batch["labels"] = torch.tensor(raw, dtype=torch.long)
        return batch


class WithClassWeights:
    """Adds the inverse-frequency `class_weights` to every training batch."""

    def __init__(self, collator, weights: torch.Tensor):
        self.collator, self.weights = collator, weights

    def __call__(self, features):
        batch = self.collator(features)
        batch["class_weights"] = self.weights
        return batch


@dataclass
class GeneDropout:
    """A finetuning augmentation (`TrainingConfig.gene_dropout`): called on each padded training batch right before
    its step (`train`'s `batch_transform`), it leaves out a random `share` of every cell's gene tokens, drawn anew
    each step from torch's global random state (which checkpoints save, so a resumed run drops the same genes).
    Evaluation batches never pass through it: the model is scored on every gene a cell shows."""

    pad_token_id: int
    share: float

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = batch["attention_mask"]
        return drop_gene_tokens(batch, self.share, torch.rand(mask.shape, device=mask.device), self.pad_token_id)
