"""A prepared data folder: cells tokenized with the prior's report, leak-free splits, and reading it back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..grn.coverage import LOW_COVERAGE, coverage_line, prior_coverage, prior_report
from ..grn.network import GeneRegulatoryNetwork
from ..model.tokenization_scgrn import ScGrnTokenizer
from ..storage.folders import atomic_folder, check_output_folder, folder_lock, jsonable
from .config import DataConfig
from .reading import describe_sources, qc_masks, read_cells_from
from .tokenize import tokenize_anndata

logger = logging.getLogger(__name__)


def save_dataset_atomically(dataset, path: str | os.PathLike, metadata: dict | None = None,
                            max_shard_size: str | int = "500MB") -> Path:
    """`dataset.save_to_disk` (Arrow shards of at most `max_shard_size`) into a temporary sibling folder, then
    rename: a crash never leaves half a dataset."""
    with atomic_folder(path) as temporary:
        dataset.save_to_disk(str(temporary), max_shard_size=max_shard_size)
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
    `label_column` when given (a class too small to split stays in train;
    every other class is still stratified). Seeded."""
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

    labels = None if label_column is None else obs[label_column].astype(str).to_numpy()

    def split(rows, size):
        """`rows` into (kept, held out), stratified by label; a class with fewer than 2 cells among `rows` cannot
        be split and stays on the kept side, while every other class is still stratified."""
        if labels is None:
            return train_test_split(rows, test_size=size, random_state=seed)
        names, counts = np.unique(labels[rows], return_counts=True)
        small = np.isin(labels[rows], names[counts < 2])
        splittable = rows[~small]
        kept, held = train_test_split(splittable, test_size=size, random_state=seed, stratify=labels[splittable])
        return np.concatenate([kept, rows[small]]), held

    rest, test = split(index, test_size)
    train, validation = split(rest, validation_size / (1 - test_size))
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def prepare_cells(
    source,
    network: GeneRegulatoryNetwork,
    output_dir: str | os.PathLike,
    data: DataConfig | None = None,
    *,
    label_column: str | None = None,
    group_column: str | None = None,
    obs_columns: tuple[str, ...] = (),
    tokenizer: "ScGrnTokenizer | str | os.PathLike | None" = None,
    overwrite: bool = False,
    **settings,
) -> dict:
    """Cells -> tokenizer + tokenized train/validation/test `DatasetDict` + prior report, under `output_dir`:
    `tokenizer/`, `dataset/` (Arrow shards of at most `max_shard_size`, with `scgrn_metadata.json`: QC, split,
    drops, panel), `prior/` (GRN files), `prior_report.json`. `source` is an `.h5ad` path, `"pbmc68k_reduced"`, an
    AnnData, or a list of them (joined, `read_cells_from`).

    How cells become tokens and splits is a [`DataConfig`] (`data`; keyword `settings` override its fields, e.g.
    `max_length=512`). `tokenizer` (a tokenizer, or a folder holding one, such as a pretrained model's) fixes the
    vocabulary instead of building one from the data's genes, so the dataset can finetune that model: genes outside
    it are dropped and counted (an error when none is left, a warning below half of the vocabulary); panel must be
    "all" and `min_cells` 0 then. The sources are described by file name and SHA-256, never by path. A non-empty
    `output_dir` is refused unless `overwrite`; the folder is written under a temporary name and renamed when
    complete. Returns the report."""
    data = DataConfig.from_dict({**dataclasses.asdict(data or DataConfig()), **settings})
    paths = tuple(s for s in (source if isinstance(source, (list, tuple)) else [source])
                  if isinstance(s, (str, os.PathLike)))
    with folder_lock(output_dir):  # a second run into the same folder is refused while this one runs
        check_output_folder(output_dir, overwrite=overwrite, inputs=paths, replaced=True)
        columns = [c for c in (label_column, group_column, *obs_columns) if c]
        tokenizer = _given_tokenizer(tokenizer, data)
        adata = _read_for_tokenizing(source, data, columns, label_column)
        cells_kept, genes_kept, qc_report = qc_masks(adata, min_genes=data.min_genes, min_cells=data.min_cells,
                                                     chunk_size=data.chunk_size)
        if label_column is not None:
            cells_kept, qc_report["unlabelled_cells_dropped"] = drop_unlabelled(adata.obs, label_column, cells_kept)
        genes, panel_report = _gene_panel(adata, network, data, tokenizer, cells_kept, genes_kept)
        tokenizer = tokenizer or ScGrnTokenizer.from_genes(genes, n_bins=data.n_bins)
        report = prior_report(network, genes)
        edges = network.to_vocab_edges(tokenizer)  # fails early, with the reason, when the prior misses the panel
        dataset, tokenize_report = tokenize_anndata(
            adata, tokenizer, obs_columns=tuple(columns), max_length=data.max_length, num_proc=data.num_proc,
            cells_kept=None if cells_kept.all() else cells_kept, chunk_size=data.chunk_size, normalize=data.normalize)
        report["per_cell"] = prior_coverage(dataset["input_ids"], edges, len(tokenizer), tokenizer.all_special_ids)
        (logger.warning if report["per_cell"]["mean_share_of_tokens_with_partner"] < LOW_COVERAGE else logger.info)(
            coverage_line(report["per_cell"]))
        obs = adata.obs[cells_kept]
        if label_column is not None and obs[label_column].nunique() < 2:
            raise ValueError(f"after QC, label column {label_column!r} has a single class; lower min_genes.")
        splits = split_cells(obs, label_column=label_column, group_column=group_column,
                             test_size=data.test_size, validation_size=data.validation_size, seed=data.seed)
        metadata = {
            "sources": describe_sources(source),
            "cells": int(cells_kept.sum()),
            "data_config": dataclasses.asdict(data),
            "qc": qc_report,
            "tokenization": {**tokenize_report, "normalized_by_scgrn": data.normalize},
            "panel": panel_report,
            "split": {"seed": data.seed, "label_column": label_column, "group_column": group_column,
                      **{name: int(len(rows)) for name, rows in splits.items()}},
        }
        with atomic_folder(output_dir) as folder:
            save_dataset_atomically(_split_dataset(dataset, splits), folder / "dataset", metadata,
                                    max_shard_size=data.max_shard_size)
            tokenizer.save_pretrained(folder / "tokenizer")
            network.restrict(genes).save(folder / "prior")
            (folder / "prior_report.json").write_text(json.dumps({"prior": report, **metadata}, indent=2,
                                                                 default=jsonable))
        return {"prior": report, **metadata}


def _split_dataset(dataset, splits: dict):
    import datasets

    return datasets.DatasetDict({name: dataset.select(rows) for name, rows in splits.items()})


def _given_tokenizer(tokenizer, data: DataConfig):
    """The tokenizer whose vocabulary the data must use (a folder is loaded), or None to build one."""
    if tokenizer is None:
        return None
    if not isinstance(tokenizer, ScGrnTokenizer):
        if not (Path(tokenizer) / "tokenizer.json").is_file():
            raise ValueError(f"{tokenizer} holds no scgrn tokenizer (tokenizer.json); give a model/ folder a run "
                             "wrote, or a data folder's tokenizer/.")
        tokenizer = ScGrnTokenizer.from_pretrained(tokenizer)
    if data.panel != "all" or data.min_cells:
        raise ValueError("with a given tokenizer its vocabulary is the gene panel: use panel='all' and "
                         "min_cells=0 (genes outside the vocabulary are dropped and counted).")
    return tokenizer


def _read_for_tokenizing(source, data: DataConfig, columns: list, label_column: str | None):
    """The cells to tokenize, refused when nothing can come of them (no cells, missing columns, one class)."""
    adata = read_cells_from(source, backed=data.backed)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"the cells hold {adata.n_obs} cells x {adata.n_vars} genes; there is nothing to tokenize.")
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"the cells have no obs column(s) {missing}; columns are {list(adata.obs.columns)}.")
    if label_column is not None and adata.obs[label_column].nunique() < 2:
        raise ValueError(f"label column {label_column!r} has a single class; classification needs at least two.")
    return adata


def drop_unlabelled(obs: pd.DataFrame, label_column: str, cells_kept: np.ndarray) -> tuple[np.ndarray, int]:
    """`cells_kept` without the cells whose label is missing (NaN or None: they would become a class named
    "nan"), and how many were dropped (with a warning; tokenize without `label_column` to keep them for
    pretraining)."""
    labelled = obs[label_column].notna().to_numpy()
    dropped = int((cells_kept & ~labelled).sum())
    if dropped:
        logger.warning(f"{dropped} cells have no {label_column!r} label (NaN); they are left out of every split. "
                       "Tokenize without --label_column to keep them for pretraining.")
    return cells_kept & labelled, dropped


def _gene_panel(adata, network, data: DataConfig, tokenizer, cells_kept, genes_kept) -> tuple[list, dict]:
    """The genes of the vocabulary and how they were chosen: the given tokenizer's, every gene kept by QC, or a
    (prior-aware) variable-gene panel."""
    from ..grn.panel import select_gene_panel

    if tokenizer is not None:
        genes = tokenizer.convert_ids_to_tokens(tokenizer.gene_vocab_ids.tolist())
        return genes, {"strategy": "tokenizer", "panel_genes": len(genes),
                       "vocabulary_genes_in_data": tokenizer.check_coverage(list(adata.var_names.astype(str)))}
    if data.panel == "all":
        genes = list(adata.var_names[genes_kept].astype(str))
        return genes, {"strategy": "all", "panel_genes": len(genes)}
    subset = adata[cells_kept][:, genes_kept] if not (cells_kept.all() and genes_kept.all()) else adata
    return select_gene_panel(subset, network, n_top_genes=data.n_top_genes, strategy=data.panel)


def load_prepared(data_dir: Path, streamed: bool = False):
    """The tokenized splits, tokenizer, prior and metadata of a data folder. A folder whose training cells stream
    from a SOMA experiment (`soma.prepare_soma`) holds only `validation` and `train_sample`; it is refused unless
    `streamed` (pretraining reads its training cells with `soma.training_cells`)."""
    import datasets

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist; create it with data/tokenize_cells.py.")
    for part in ("dataset", "tokenizer", "prior"):
        if not (data_dir / part).exists():
            raise ValueError(f"{data_dir} lacks {part}/; create it with data/tokenize_cells.py.")
    dataset = datasets.load_from_disk(str(data_dir / "dataset"))
    if "train" not in dataset and not streamed:
        raise ValueError(f"{data_dir} streams its training cells from a SOMA experiment, which serves pretraining "
                         "only; tokenize labelled cells with data/tokenize_cells.py to finetune or evaluate.")
    needed = {"input_ids", "expression_values", "expression_bins"}
    for name, split in dataset.items():
        missing = needed - set(split.column_names)
        if missing:
            raise ValueError(f"split {name!r} of {data_dir / 'dataset'} lacks column(s) {sorted(missing)}.")
    metadata_path = data_dir / "dataset" / "scgrn_metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    tokenizer = ScGrnTokenizer.from_pretrained(data_dir / "tokenizer")
    network = GeneRegulatoryNetwork.load(data_dir / "prior")
    return dataset, tokenizer, network, metadata
