"""The pretraining heads that read the pooled cell embedding: the cell decoder (scGPT's MVC), the gene-detection
decoder, the contrastive term between two masked views of one cell (SimCLR's NT-Xent), and the depth decorrelation
penalty. Shipped with the weights: imports only torch."""

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


class ScGrnGeneDetection(nn.Module):
    """Which genes of the panel a cell detects, from the pooled cell embedding and the cell's depth only:
    `logits[b, g] = <query(gene_g), cell(c_b)> + base_g + offset(gene_g) + slope(gene_g) * depth_b`, where `base_g`
    is the logit of the gene's training detection share (`gene_detection`, which also defines the panel: every gene
    some training cell detects) and `depth_b` the cell's log gene count, centred on the training cells' mean
    (`detection_depth`). The depth terms let the decoder explain how many genes a cell detects without the
    embedding, so what the embedding adds is which genes: the cell's state."""

    def __init__(self, config):
        super().__init__()
        self.cls_token_id, self.pad_token_id = config.cls_token_id, config.pad_token_id
        self.vocab_size = config.vocab_size
        self.query = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Sigmoid())
        self.cell = nn.Linear(config.hidden_size, config.hidden_size)
        self.depth = nn.Linear(config.hidden_size, 2)  # per gene: an offset and a slope on the cell's depth
        self.register_buffer("gene_detection", torch.zeros(config.vocab_size), persistent=True)
        self.register_buffer("detection_depth", torch.zeros(()), persistent=True)

    def set_panel(self, shares: torch.Tensor, mean_log_genes: float) -> None:
        """Each gene's share of training cells that detect it (`(vocab_size,)`; the panel is where it is above 0)
        and the training cells' mean log gene count (pretraining sets both)."""
        self.gene_detection.copy_(torch.as_tensor(shares, dtype=self.gene_detection.dtype).reshape(-1))
        self.detection_depth.fill_(float(mean_log_genes))

    @property
    def panel_gene_ids(self) -> torch.Tensor:
        """The token ids the decoder scores: every gene some training cell detects."""
        return torch.nonzero(self.gene_detection > 0).squeeze(1)

    @property
    def panel_shares(self) -> torch.Tensor:
        """The panel genes' training detection shares, kept inside (0, 1) so that their logits are finite: what the
        decoder starts from (`evaluation.metrics.detection_metrics` scores it against trivial predictors of its
        own, which allow for the genes each input shows)."""
        return self.gene_detection[self.panel_gene_ids].clamp(1e-4, 1 - 1e-4)

    def genes(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch, vocab_size)` 1.0 for each gene token of each row (not `[CLS]`, not padding)."""
        positions = gene_positions(tokens, tokens != self.pad_token_id, self.cls_token_id)
        return cell_gene_targets(tokens, positions, self.vocab_size)

    def forward(self, cell_embeddings: torch.Tensor, gene_embeddings: torch.Tensor, cell_genes: torch.Tensor,
                input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits `(batch, panel)` (`gene_embeddings`: the model's whole `(vocab_size, hidden)` table) and the
        binary cross-entropy over the panel genes each row does not show (`input_ids`): detected by its cell
        (`cell_genes`, the cell's token ids before any view left genes out) or not. Shown genes are not scored (the
        pooled state could copy them); the loss is None when a batch leaves nothing to score."""
        panel = self.panel_gene_ids
        if len(panel) == 0:
            raise ValueError("the gene-detection decoder has an empty panel: set_panel was never called "
                             "(pretraining sets it from the training cells).")
        in_cell = self.genes(cell_genes)
        depth = (in_cell.sum(1).clamp(min=1).log() - self.detection_depth).to(cell_embeddings.dtype)
        genes = gene_embeddings[panel]
        offset, slope = self.depth(genes).unbind(-1)
        base = torch.logit(self.panel_shares).to(cell_embeddings.dtype)
        logits = self.cell(cell_embeddings) @ self.query(genes).T + (base + offset)[None] + slope[None] * depth[:, None]
        scored = self.genes(input_ids)[:, panel] == 0
        if not scored.any():
            return logits, None
        targets = in_cell[:, panel][scored]
        return logits, nn.functional.binary_cross_entropy_with_logits(logits.float()[scored], targets)


def cell_gene_targets(cell_genes: torch.Tensor, genes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`(batch, vocab_size)` 1.0 where a cell detects a gene: `cell_genes` `(batch, L)` token ids, `genes` where
    they are gene tokens (not `[CLS]`, not padding; those are parked in an extra column, then dropped)."""
    targets = torch.zeros(len(cell_genes), vocab_size + 1, device=cell_genes.device)
    ids = torch.where(genes, cell_genes, torch.full_like(cell_genes, vocab_size))
    return targets.scatter_(1, ids, 1.0)[:, :vocab_size]


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


__all__ = ["ScGrnCellContrast", "ScGrnCellDecoder", "ScGrnGeneDetection", "cell_gene_targets", "depth_correlation",
           "depth_penalty", "gene_positions", "token_depth", "visible_values"]
