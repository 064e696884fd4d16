"""From AnnData to tokenized `datasets` and batches: tokenization into Arrow, leak-free splits, collators.

Uses anndata/pandas/datasets; never imported by the model files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

SEQUENCE_COLUMNS = ("input_ids", "expression_values", "expression_bins")


def pbmc68k_reduced_counts():
    """scanpy's bundled `pbmc68k_reduced` (700 PBMCs, 765 genes, 10 `bulk_labels`) with integer UMI counts in `.X`,
    recovered as `rint(expm1(raw.X) * n_counts / 1e4)` (the largest deviation from an integer before rounding is
    0.08). No download: the file ships inside scanpy."""
    import anndata
    import scanpy as sc
    import scipy.sparse as sp

    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X.toarray() if sp.issparse(adata.raw.X) else np.asarray(adata.raw.X)
    counts = np.rint(np.expm1(raw) * adata.obs["n_counts"].to_numpy()[:, None] / 1e4)
    return anndata.AnnData(sp.csr_matrix(counts.astype(np.float32)), obs=adata.obs.copy(), var=adata.raw.var.copy())


def check_raw_counts(matrix, sample: int = 100_000) -> None:
    """Refuse data that are not raw counts (log-normalised or scaled), naming what was found."""
    data = matrix.data if hasattr(matrix, "data") and hasattr(matrix, "indptr") else np.asarray(matrix).ravel()
    data = np.asarray(data[:sample], dtype=np.float64)
    if data.size == 0:
        raise ValueError("the expression matrix holds no non-zero value.")
    if not np.isfinite(data).all() or (data < 0).any():
        raise ValueError("the expression matrix holds NaN, infinite or negative values; raw counts are needed.")
    fractional = np.abs(data - np.rint(data)) > 1e-3
    if fractional.mean() > 0.01:
        raise ValueError(
            f"{fractional.mean():.0%} of sampled values are not integers: this looks like normalised or log data. "
            "Pass raw counts (adata.layers['counts'] or adata.raw), or tokenize with normalize=False if the values "
            "are already log1p-normalised."
        )


def tokenize_anndata(
    adata,
    tokenizer,
    *,
    obs_columns: list[str] | tuple[str, ...] = (),
    max_length: int | None = 2048,
    chunk_size: int = 10_000,
    gene_column: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    show_progress: bool = True,
):
    """Tokenize every cell into a `datasets.Dataset` with `input_ids`, `expression_values`, `expression_bins`
    (ragged, no padding), `length` and the requested `obs` columns. Works chunk by chunk over CSR rows (backed
    AnnData too), so memory follows `chunk_size`, not the file. Returns the dataset and the tokenizer's report
    summed over chunks."""
    import datasets

    missing = [c for c in obs_columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"adata.obs has no column(s) {missing}; columns are {list(adata.obs.columns)}.")
    if adata.n_obs == 0:
        raise ValueError("the AnnData holds no cells.")
    gene_names = list(adata.var[gene_column].astype(str)) if gene_column else list(adata.var_names)
    matrix = adata.X if layer is None else adata.layers[layer]
    if normalize:
        check_raw_counts(matrix[: min(adata.n_obs, 1000)])
    parts, report = [], {}
    for start in tqdm(range(0, adata.n_obs, chunk_size), desc="tokenizing", disable=not show_progress, unit="chunk"):
        stop = min(start + chunk_size, adata.n_obs)
        chunk = matrix[start:stop]
        encoded = tokenizer.encode_cells(chunk, gene_names, max_length=max_length, normalize=normalize, return_tensors="np")
        lengths = encoded["attention_mask"].sum(1)
        columns = {
            name: [row[:n].tolist() for row, n in zip(encoded[name], lengths)]
            for name in SEQUENCE_COLUMNS
            if name in encoded
        }
        columns["length"] = lengths.tolist()
        for column in obs_columns:
            columns[column] = adata.obs[column].iloc[start:stop].astype(str).tolist()
        parts.append(datasets.Dataset.from_dict(columns))
        for key, value in tokenizer.last_report.items():
            if isinstance(value, (int, float)) and key not in ("genes_in_input", "genes_unknown_to_vocabulary"):
                report[key] = report.get(key, 0) + value
            else:
                report[key] = value
    report["mean_genes_per_cell"] = float(np.mean([n for part in parts for n in part["length"]]) - 1)
    return datasets.concatenate_datasets(parts), report


@contextmanager
def atomic_folder(path: str | os.PathLike):
    """Yield a temporary sibling folder to fill; on success it replaces `path`, on any error it is removed, so a
    crash never leaves a half-written folder at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def save_dataset_atomically(dataset, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """`dataset.save_to_disk` into a temporary sibling folder, then rename: a crash never leaves half a dataset."""
    with atomic_folder(path) as temporary:
        dataset.save_to_disk(str(temporary))
        if metadata is not None:
            (temporary / "scgrn_metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    return Path(path)


def split_cells(
    obs: pd.DataFrame,
    *,
    label_column: str | None = None,
    group_column: str | None = None,
    test_size: float = 0.2,
    validation_size: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Row indices of train/validation/test splits that do not leak.

    With `group_column` (donor, sample), whole groups go to one split. Otherwise the split is stratified by
    `label_column` when given (classes too small to split stay in train). Seeded."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    index = np.arange(len(obs))
    for column in (label_column, group_column):
        if column is not None and column not in obs.columns:
            raise ValueError(f"obs has no column {column!r}; columns are {list(obs.columns)}.")
    if group_column is not None:
        groups = obs[group_column].astype(str).to_numpy()
        if len(np.unique(groups)) < 3:
            raise ValueError(f"column {group_column!r} has fewer than 3 groups; cannot split by it into 3 parts.")
        outer = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
        rest, test = next(outer.split(index, groups=groups))
        inner = GroupShuffleSplit(n_splits=1, test_size=validation_size / (1 - test_size), random_state=seed)
        train, validation = next(inner.split(rest, groups=groups[rest]))
        return {"train": rest[train], "validation": rest[validation], "test": test}

    def stratify(rows):
        if label_column is None:
            return None
        labels = obs[label_column].astype(str).to_numpy()[rows]
        counts = pd.Series(labels).value_counts()
        return labels if counts.min() >= 2 else None

    rest, test = train_test_split(index, test_size=test_size, random_state=seed, stratify=stratify(index))
    train, validation = train_test_split(
        rest, test_size=validation_size / (1 - test_size), random_state=seed, stratify=stratify(rest)
    )
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


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


@dataclass
class DataCollatorForMaskedExpression:
    """Pads to the batch's longest cell and hides the expression of a random `mask_probability` share of gene
    tokens (never `[CLS]` or padding; at least one gene per cell). Masked bins become `n_bins + 1`, masked values
    `mask_value`. `labels` hold the true bins (-100 elsewhere) or true values (NaN elsewhere).

    Calling it does both (as transformers' collators do, e.g. for `Trainer`). The scgrn training loop calls
    `pad` in the DataLoader and `mask` just before each step instead, so the random draws follow the step order
    and a resumed run masks exactly as an uninterrupted one (DataLoaders prefetch, which would otherwise consume
    the random state of batches not yet trained on)."""

    pad_token_id: int
    value_encoding: str
    n_bins: int
    mask_value: float = -1.0
    mask_probability: float = 0.15
    generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, config, mask_probability: float = 0.15, seed: int | None = None):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return cls(config.pad_token_id, config.value_encoding, config.n_bins, config.mask_value, mask_probability, generator)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return self.mask(self.pad(features))

    def pad(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return _pad_cells(features, self.pad_token_id)

    def mask(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mask a padded batch (on any device); draws from `generator` or, without one, torch's global RNG."""
        batch = dict(batch)
        genes = batch["attention_mask"].bool().clone()
        genes[:, 0] = False
        if self.generator is None:
            draw = torch.rand(genes.shape, device=genes.device)
        else:
            draw = torch.rand(genes.shape, generator=self.generator).to(genes.device)
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
