"""The pretraining heads that read the pooled cell embedding: the cell decoder (scGPT's MVC), the contrastive
term between two masked views of one cell (SimCLR's NT-Xent), and the depth decorrelation penalty. Shipped with the
weights: imports only torch."""

from __future__ import annotations

import torch
from torch import nn


class ScGrnCellDecoder(nn.Module):
    """Each gene's value predicted from the pooled cell embedding and the gene's own embedding only (scGPT's MVC):
    `logits[b, g, o] = <query(gene_g), W_o cell_b>`, where `query` is a sigmoid-gated projection of the gene
    embedding. Nothing of the cell reaches it but the pooled state, so its loss trains that state."""

    def __init__(self, config, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.query = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Sigmoid())
        self.cell = nn.Linear(config.hidden_size, config.hidden_size * out_features)

    def forward(self, cell_embeddings: torch.Tensor, gene_embeddings: torch.Tensor) -> torch.Tensor:
        keys = self.cell(cell_embeddings).view(cell_embeddings.shape[0], self.out_features, -1)
        return torch.einsum("blh,boh->blo", self.query(gene_embeddings), keys)


class ScGrnCellContrast(nn.Module):
    """Contrastive term on the pooled cell embedding (SimCLR's NT-Xent, with SupCon's mean over several positives):
    the rows of a batch that share a `cell_index` are differently masked views of one cell; each row's projected,
    unit-length embedding must pick out its other views among every other row of the batch, at
    `config.contrastive_temperature`. Two views of a cell differ only in which values are hidden, so the term pays
    for an embedding that names the cell from whatever genes it shows, and spreads distinct cells apart."""

    def __init__(self, config):
        super().__init__()
        self.temperature = config.contrastive_temperature
        self.projection = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.ReLU(),
                                        nn.Linear(config.hidden_size, config.hidden_size))

    def forward(self, cell_embeddings: torch.Tensor, cell_index: torch.Tensor) -> torch.Tensor | None:
        """The mean loss over rows that have another view in the batch, or None when no row has one."""
        projected = nn.functional.normalize(self.projection(cell_embeddings).float(), dim=-1)
        itself = torch.eye(len(cell_index), dtype=torch.bool, device=cell_index.device)
        similarity = (projected @ projected.T / self.temperature).masked_fill(itself, float("-inf"))
        positive = (cell_index[:, None] == cell_index[None, :]) & ~itself
        counted = positive.any(1)
        if not counted.any():
            return None
        log_probability = similarity.log_softmax(1).masked_fill(~positive, 0.0)
        return -(log_probability.sum(1)[counted] / positive.sum(1)[counted]).mean()


def gene_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cls_token_id: int) -> torch.Tensor:
    """`(batch, L)` where a batch holds gene tokens: not `[CLS]`, not padding."""
    genes = input_ids != cls_token_id
    return genes if attention_mask is None else genes & attention_mask.bool()


def visible_values(input_ids: torch.Tensor, expression_values: torch.Tensor, attention_mask: torch.Tensor | None,
                   *, cls_token_id: int, mask_value: float) -> torch.Tensor:
    """`(batch, L)` the gene tokens whose (continuous) value the model is shown: not masked to `mask_value`."""
    return gene_positions(input_ids, attention_mask, cls_token_id) & (expression_values != mask_value)


def token_depth(input_ids: torch.Tensor, expression_values: torch.Tensor | None, attention_mask: torch.Tensor | None,
                *, cls_token_id: int, mask_value: float) -> torch.Tensor:
    """`(batch, 1 or 2)` each row's depth as its tokens show it: the log of its gene tokens (not `[CLS]`, not
    padding) and, for continuous values, the mean of its visible (unmasked) values."""
    genes = gene_positions(input_ids, attention_mask, cls_token_id)
    measures = [genes.sum(1).clamp(min=1).float().log()]
    if expression_values is not None:
        visible = visible_values(input_ids, expression_values, attention_mask, cls_token_id=cls_token_id,
                                 mask_value=mask_value)
        measures.append((expression_values.float() * visible).sum(1) / visible.sum(1).clamp(min=1))
    return torch.stack(measures, 1)


def depth_correlation(cell_embeddings: torch.Tensor, depth: torch.Tensor) -> torch.Tensor | None:
    """The mean, over embedding dimensions and depth measures, of their squared Pearson correlation across the batch
    (0: no linear trace of depth); None for batches of fewer than 3 rows. A measure constant over the batch counts
    as uncorrelated."""
    if len(cell_embeddings) < 3:
        return None
    x = cell_embeddings.float() - cell_embeddings.float().mean(0)
    d = depth.float() - depth.float().mean(0)
    covariance = x.T @ d / len(x)
    scale = x.pow(2).mean(0).sqrt()[:, None] * d.pow(2).mean(0).sqrt()[None, :]
    return (covariance / (scale + 1e-6)).pow(2).mean()


def depth_penalty(config, cell_embeddings: torch.Tensor, input_ids: torch.Tensor,
                  expression_values: torch.Tensor | None, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[`depth_correlation`] of the pooled states with each row's [`token_depth`], or None where the model has no
    such term (`config.depth_decorrelation_weight` 0) or the batch is too small."""
    if not config.depth_decorrelation_weight > 0:
        return None
    values = expression_values if config.value_encoding == "continuous" else None  # bins mask bins, not values
    depth = token_depth(input_ids, values, attention_mask, cls_token_id=config.cls_token_id,
                        mask_value=config.mask_value)
    return depth_correlation(cell_embeddings, depth)


__all__ = ["ScGrnCellContrast", "ScGrnCellDecoder", "depth_correlation", "depth_penalty", "gene_positions",
           "token_depth", "visible_values"]
