"""scanpy-style tools: run a scgrn model over an AnnData and write the results where scanpy users look for them.

    from modeling_scgrn.tl import embed, predict, perturb
    predict(adata, model, tokenizer)            # adata.obs["scgrn_prediction"], adata.obsm["X_scgrn"], ...
    perturb(adata, model, tokenizer, ["SPI1"])  # in-silico deletion: adata.uns["scgrn_perturbation"]
    sc.pp.neighbors(adata, use_rep="X_scgrn")
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch

from ..cells.config import DataConfig
from .perturb import perturb

__all__ = ["embed", "predict", "perturb", "check_labels"]  # scanpy-style tools live together


def _batches(adata, tokenizer, *, max_length, gene_column, layer, normalize, chunk_size):
    gene_names = list(adata.var[gene_column].astype(str)) if gene_column else list(adata.var_names)
    tokenizer.check_coverage(gene_names)
    matrix = adata.X if layer is None else adata.layers[layer]
    for start in range(0, adata.n_obs, chunk_size):
        yield tokenizer.encode_cells(matrix[start : start + chunk_size], gene_names, max_length=max_length,
                                     normalize=normalize, return_tensors="pt")


@torch.no_grad()
def _run(model, encoded, batch_size, device):
    model.eval()
    for start in range(0, encoded["input_ids"].shape[0], batch_size):
        part = {k: v[start : start + batch_size].to(device) for k, v in encoded.items()}
        length = int(part["attention_mask"].sum(1).max())  # drop columns that are padding for the whole batch
        yield model(**{k: v[:, :length] for k, v in part.items()})


def _model_inputs(model):
    return model.base_model if hasattr(model, "base_model") else model


def embed(
    adata,
    model,
    tokenizer,
    *,
    key_added: str = "X_scgrn",
    max_length: int | None = DataConfig.max_length,
    batch_size: int = 32,
    gene_column: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
) -> None:
    """Cell embeddings of a scgrn model (any head; its encoder's pooled output).

    Sets the following fields:
        `adata.obsm[key_added]`: `(n_obs, hidden_size)` float32 embeddings.
    """
    device = torch.device(device) if device else next(model.parameters()).device
    encoder = _model_inputs(model).to(device)
    parts = []
    for encoded in _batches(adata, tokenizer, max_length=max_length, gene_column=gene_column, layer=layer,
                            normalize=normalize, chunk_size=chunk_size):
        parts += [out.pooler_output.float().cpu() for out in _run(encoder, encoded, batch_size, device)]
    adata.obsm[key_added] = torch.cat(parts).numpy()


def predict(
    adata,
    model,
    tokenizer,
    *,
    key_added: str = "scgrn",
    embedding_key: str | None = "X_scgrn",
    max_length: int | None = DataConfig.max_length,
    batch_size: int = 32,
    gene_column: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    chunk_size: int = 4096,
    device: str | torch.device | None = None,
) -> None:
    """Cell-type predictions of a `ScGrnForCellClassification` model.

    Sets the following fields:
        `adata.obs[f"{key_added}_prediction"]`: predicted label (categorical, categories = the model's classes).
        `adata.obs[f"{key_added}_probability"]`: probability of the predicted label.
        `adata.obsm[f"{key_added}_probabilities"]`: `(n_obs, num_labels)` class probabilities, columns in
            `adata.uns[f"{key_added}_classes"]` order.
        `adata.obsm[embedding_key]`: the cell embeddings the classifier read (unless `embedding_key=None`).
    """
    if getattr(model, "task", None) != "cell_classification":
        raise ValueError("predict needs a cell classifier (ScGrnForCellClassification); use embed() for embeddings.")
    device = torch.device(device) if device else next(model.parameters()).device
    model = model.to(device)
    probabilities, embeddings = [], []
    for encoded in _batches(adata, tokenizer, max_length=max_length, gene_column=gene_column, layer=layer,
                            normalize=normalize, chunk_size=chunk_size):
        for out in _run(model, encoded, batch_size, device):
            probabilities.append(out.logits.float().softmax(-1).cpu())
            embeddings.append(out.cell_embeddings.float().cpu())
    probabilities = torch.cat(probabilities).numpy()
    classes = [model.config.id2label[i] for i in range(model.config.num_labels)]
    best = probabilities.argmax(1)
    adata.obs[f"{key_added}_prediction"] = pd.Categorical.from_codes(best, categories=classes)
    adata.obs[f"{key_added}_probability"] = probabilities[np.arange(len(best)), best].astype(np.float32)
    adata.obsm[f"{key_added}_probabilities"] = probabilities.astype(np.float32)
    adata.uns[f"{key_added}_classes"] = np.array(classes, dtype=object)
    if embedding_key:
        adata.obsm[embedding_key] = torch.cat(embeddings).numpy()


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
