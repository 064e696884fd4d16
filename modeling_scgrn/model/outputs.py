"""What scgrn's models return: `ModelOutput` dataclasses, as transformers' models do. Shipped with the weights:
imports only torch and transformers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class ScGrnModelOutput(ModelOutput):
    """
    Args:
        last_hidden_state: `(batch, L, hidden)` final (LayerNormed) token states, `[CLS]` at position 0.
        pooler_output: `(batch, hidden)` cell embedding (per `config.pooling`).
        hidden_states: tuple of `num_hidden_layers + 1` `(batch, L, hidden)` tensors (embeddings, then each block).
        attentions: tuple of `num_hidden_layers` `(batch, heads, L, L)` attention probabilities (eager only).
        attention_masks: tuple of `num_hidden_layers` `(batch, 1, L, L)` boolean masks actually applied.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    attention_masks: tuple[torch.BoolTensor, ...] | None = None


@dataclass
class ScGrnMaskedExpressionOutput(ModelOutput):
    """
    Args:
        loss: masked-value loss (cross-entropy over bins, or mean squared error of log1p values): the token head's,
            plus `cell_decoder_weight` times the cell decoder's when the model has one.
        logits: `(batch, L, n_bins + 1)` bin logits (binned) or `(batch, L)` predicted log1p values (continuous),
            from each token's final state.
        cell_logits: the same predictions from the pooled cell embedding and each gene's identity alone (the cell
            decoder, `config.cell_decoder="mvc"`), or None.
        token_loss, cell_loss: the token head's and the cell decoder's parts of `loss` (with labels and a decoder).
        contrastive_loss: the contrastive term on the pooled embedding (`config.contrastive_weight > 0`, with
            `cell_index`), added to `loss` at that weight.
        depth_loss: the depth decorrelation penalty on the pooled embedding (`config.depth_decorrelation_weight > 0`,
            with labels), added to `loss` at that weight.
        detection_loss: the gene-detection decoder's binary cross-entropy over the panel genes a row does not show
            (`config.detection_weight > 0`, with `cell_genes`), added to `loss` at that weight.
        detection_logits: `(batch, panel genes)` its logits, in the order of its `panel_gene_ids`.
        hidden_states, attentions: as in [`ScGrnModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cell_logits: torch.FloatTensor | None = None
    token_loss: torch.FloatTensor | None = None
    cell_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    depth_loss: torch.FloatTensor | None = None
    detection_loss: torch.FloatTensor | None = None
    detection_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class ScGrnCellClassificationOutput(ModelOutput):
    """
    Args:
        loss: cross-entropy of the cell-type logits (when `labels` are given).
        logits: `(batch, num_labels)`.
        cell_embeddings: `(batch, hidden)` pooled embedding the classifier read.
        hidden_states, attentions: as in [`ScGrnModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cell_embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


__all__ = ["ScGrnCellClassificationOutput", "ScGrnMaskedExpressionOutput", "ScGrnModelOutput"]
