"""scanpy-style tools: run a scgrn model over an AnnData and write the results where scanpy users look for them
(the reading and writing rules every verb shares: `tl/fields.py`).

    from modeling_scgrn.tl import embed, predict, perturb
    predict(adata, model, tokenizer)            # adata.obs["scgrn_prediction"], adata.obsm["X_scgrn"], uns["scgrn"]
    perturb(adata, model, tokenizer, ["SPI1"])  # in-silico deletion: adata.uns["scgrn_perturbation"]
    sc.pp.neighbors(adata, use_rep="X_scgrn")
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from ..cells.config import DataConfig
from ..evaluation.inference import encoded_batches, run_batches
from .fields import CellFields, target
from .perturb import perturb

__all__ = ["embed", "predict", "perturb", "check_labels"]  # scanpy-style tools live together


def _outputs(model, adata, tokenizer, fields: CellFields, batch_size: int, chunk_size: int, device):
    """The model's output for every batch of cells of `adata`, in order."""
    tokenizer.check_matches(model.config)
    for encoded in fields.encode(adata, tokenizer, chunk_size=chunk_size):
        for _, output in run_batches(model, encoded_batches(encoded, batch_size), device=device):
            yield output


def _device(model, device):
    return torch.device(device) if device else next(model.parameters()).device


def embed(
    adata,
    model,
    tokenizer,
    *,
    key_added: str = "scgrn",
    copy: bool = False,
    gene_column: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    max_length: int | None = DataConfig.max_length,
    batch_size: int = 32,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
):
    """Cell embeddings of a scgrn model (any head; its encoder's pooled output).

    Sets the following fields (of a copy, returned, with `copy=True`):
        `adata.obsm[f"X_{key_added}"]`: `(n_obs, hidden_size)` float32 embeddings.
        `adata.uns[key_added]["params"]`: the model class, its grn_mode and how the cells were read.
    """
    adata, fields = target(adata, copy), CellFields(gene_column, layer, normalize, max_length)
    device = _device(model, device)
    encoder = model.base_model.to(device)
    parts = [out.pooler_output.float().cpu()
             for out in _outputs(encoder, adata, tokenizer, fields, batch_size, chunk_size, device)]
    adata.obsm[f"X_{key_added}"] = torch.cat(parts).numpy()
    adata.uns[key_added] = {"params": fields.params(model)}
    return adata if copy else None


def predict(
    adata,
    model,
    tokenizer,
    *,
    key_added: str = "scgrn",
    copy: bool = False,
    gene_column: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    max_length: int | None = DataConfig.max_length,
    batch_size: int = 32,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
):
    """Cell-type predictions of a `ScGrnForCellClassification` model.

    Sets the following fields (of a copy, returned, with `copy=True`):
        `adata.obs[f"{key_added}_prediction"]`: predicted label (categorical, categories = the model's classes).
        `adata.obs[f"{key_added}_probability"]`: probability of the predicted label.
        `adata.obsm[f"{key_added}_probabilities"]`: `(n_obs, num_labels)` class probabilities, columns in
            `adata.uns[key_added]["classes"]` order.
        `adata.obsm[f"X_{key_added}"]`: the cell embeddings the classifier read.
        `adata.uns[key_added]`: `classes` and `params` (the model class, its grn_mode, how the cells were read).
    """
    if getattr(model, "task", None) != "cell_classification":
        raise ValueError("predict needs a cell classifier (ScGrnForCellClassification); use embed() for embeddings.")
    adata, fields = target(adata, copy), CellFields(gene_column, layer, normalize, max_length)
    device = _device(model, device)
    model = model.to(device)
    probabilities, embeddings = [], []
    for out in _outputs(model, adata, tokenizer, fields, batch_size, chunk_size, device):
        probabilities.append(out.logits.float().softmax(-1).cpu())
        embeddings.append(out.cell_embeddings.float().cpu())
    probabilities = torch.cat(probabilities).numpy()
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    best = probabilities.argmax(1)
    adata.obs[f"{key_added}_prediction"] = pd.Categorical.from_codes(best, categories=classes)
    adata.obs[f"{key_added}_probability"] = probabilities[np.arange(len(best)), best].astype(np.float32)
    adata.obsm[f"{key_added}_probabilities"] = probabilities.astype(np.float32)
    adata.obsm[f"X_{key_added}"] = torch.cat(embeddings).numpy()
    adata.uns[key_added] = {"classes": np.array(classes, dtype=object), "params": fields.params(model)}
    return adata if copy else None


def check_labels(adata, label_column: str, model) -> dict:
    """Compare a label column with the model's classes: counts of cells whose label the model never saw."""
    if label_column not in adata.obs:
        raise ValueError(f"adata.obs has no column {label_column!r}; columns are {list(adata.obs.columns)}.")
    known = set(model.config.label2id)
    labels = adata.obs[label_column].astype(str)
    unseen = labels[~labels.isin(known)].value_counts()
    if len(unseen):
        warnings.warn(
            f"{int(unseen.sum())} cells carry labels the model was not trained on: "
            f"{', '.join(f'{k} ({v})' for k, v in unseen.items())}; they can only be predicted as one of "
            f"{sorted(known)}.", stacklevel=2,
        )
    return {str(k): int(v) for k, v in unseen.items()}
