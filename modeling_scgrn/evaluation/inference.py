"""The one inference loop: batches of cells through a scgrn model, in order, in eval mode, without gradients. Every
reading of a model outside training goes through `run_batches`: the scanpy verbs (`tl.embed`, `tl.predict`,
`tl.perturb`), attention scores and the evaluation metrics."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

# the per-token columns a batch may carry; positions that are padding in every cell of a batch are dropped from them
TOKEN_COLUMNS = ("input_ids", "attention_mask", "expression_values", "expression_bins")


def encoded_batches(encoded: dict, batch_size: int) -> Iterator[dict]:
    """Consecutive `batch_size`-cell slices of tokenized cells (a dict of `(n_cells, length)` tensors)."""
    for start in range(0, encoded["input_ids"].shape[0], batch_size):
        yield {k: v[start : start + batch_size] for k, v in encoded.items()}


def _on_device(batch: dict, device) -> dict:
    """The batch on `device`, without the trailing positions that are padding in every one of its cells (a token
    hidden inside a cell, attention mask 0 before its last token, is kept)."""
    attended = torch.nonzero(batch["attention_mask"].bool().any(0)).flatten()
    length = int(attended[-1]) + 1 if len(attended) else 0
    width = batch["input_ids"].shape[1]
    out = {}
    for key, value in batch.items():
        per_token = key in TOKEN_COLUMNS or (key == "labels" and value.shape == batch["input_ids"].shape)
        out[key] = (value[:, :length] if per_token and width > length else value).to(device)
    return out


def run_batches(model, batches: Iterable[dict], *, device=None, progress: bool = False, desc: str = "cells",
                total: int | None = None, **forward_kwargs) -> Iterator[tuple[dict, object]]:
    """Yield `(batch, output)` for each batch of `batches` (a DataLoader, `encoded_batches(...)`, or a list of
    padded batches), the batch moved to `device` (default: the model's) and trimmed of all-padding positions, the
    output `model(**batch, **forward_kwargs)` in eval mode without gradients. The model's training mode is restored
    when the loop ends."""
    device = device or next(model.parameters()).device
    if progress:  # only then: tqdm's wrapper draws from torch's global RNG, which would shift a seeded run
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, total=total, unit="batch")
    with _inference(model):
        for batch in batches:
            batch = _on_device(batch, device)
            yield batch, model(**batch, **forward_kwargs)


def run_batch(model, batch: dict, *, device=None, **forward_kwargs):
    """The output of the model on one batch, as `run_batches` computes it."""
    with _inference(model):
        return model(**_on_device(batch, device or next(model.parameters()).device), **forward_kwargs)


@contextmanager
def _inference(model):
    """Eval mode and no gradients, the model's training mode and torch's grad mode restored afterwards."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)
