"""From AnnData to tokenized `datasets` and batches: tokenization into Arrow, leak-free splits, collators.

Uses anndata/pandas/datasets; never imported by the model files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .cli import checked_dataclass
from .configuration_scgrn import DEFAULT_N_BINS
from .folders import atomic_folder, check_output_folder, file_sha256, jsonable
from .networks import LOW_COVERAGE, GeneRegulatoryNetwork, coverage_line, prior_coverage, prior_report
from .tokenization_scgrn import ScGrnTokenizer

logger = logging.getLogger(__name__)

SEQUENCE_COLUMNS = ("input_ids", "expression_values", "expression_bins")
PANELS = ("all", "hvg", "ranked", "union")


@dataclass
class DataConfig:
    """Every data setting, with its default: how cells become tokens and splits. The single source of these
    defaults; `prepare_cells`, the tokenizing functions, `tools` and the scripts read them from here."""

    max_length: int | None = field(default=1024, metadata={"help": "tokens per cell, [CLS] included (None: all genes)"})
    n_bins: int = field(default=DEFAULT_N_BINS, metadata={"help": "expression bins per cell"})
    panel: str = field(default="all", metadata={"help": f"gene panel, one of {PANELS}: every gene, or a (prior-aware) "
                                                        "variable-gene panel"})
    n_top_genes: int = field(default=2000, metadata={"help": "panel size for hvg/ranked/union"})
    test_size: float = field(default=0.2, metadata={"help": "share of cells (or groups) held out for testing"})
    validation_size: float = field(default=0.1, metadata={"help": "share held out for validation"})
    seed: int = field(default=0, metadata={"help": "split seed"})
    min_genes: int = field(default=0, metadata={"help": "QC: drop cells with fewer detected genes (0: off)"})
    min_cells: int = field(default=0, metadata={"help": "QC: drop genes detected in fewer cells (0: off)"})
    backed: bool = field(default=False, metadata={"help": "read one .h5ad lazily (files larger than memory)"})
    num_proc: int = field(default=1, metadata={"help": "tokenizing processes"})
    chunk_size: int = field(default=10_000, metadata={"help": "cells read and tokenized at a time"})
    max_shard_size: str = field(default="500MB", metadata={"help": "largest Arrow shard of the saved dataset"})
    normalize: bool = field(default=True, metadata={"help": "normalise raw counts (False: values are already "
                                                            "log1p-normalised)"})

    def __post_init__(self):
        if self.panel not in PANELS:
            raise ValueError(f"panel={self.panel!r} is not one of {list(PANELS)}.")
        for name in ("n_bins", "n_top_genes", "num_proc", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length={self.max_length} must be at least 2 ([CLS] and one gene).")
        if not (0 < self.test_size < 1 and 0 < self.validation_size < 1 and self.test_size + self.validation_size < 1):
            raise ValueError(f"test_size={self.test_size} and validation_size={self.validation_size} must be shares "
                             "in (0, 1) that leave cells for training.")
        if self.min_genes < 0 or self.min_cells < 0:
            raise ValueError("min_genes and min_cells must not be negative.")
        if self.backed and self.panel != "all":
            raise ValueError(f"panel={self.panel!r} needs the matrix in memory (variable genes); use panel='all' with "
                             "backed mode, or drop backed mode.")
        if not self.normalize and self.panel != "all":
            raise ValueError(f"normalize=False (values already normalised) needs panel='all', not {self.panel!r}: "
                             "the variable-gene panels normalise raw counts themselves.")

    @classmethod
    def from_dict(cls, values: dict) -> "DataConfig":
        """Build from a mapping, refusing unknown keys and values of the wrong type."""
        return checked_dataclass(cls, values, "data")


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


def _sampled_values(matrix, sample: int) -> np.ndarray:
    data = matrix.data if hasattr(matrix, "data") and hasattr(matrix, "indptr") else np.asarray(matrix).ravel()
    data = np.asarray(data[:sample], dtype=np.float64)
    if data.size == 0:
        raise ValueError("the expression matrix holds no non-zero value.")
    return data


def check_expression_values(matrix, normalize: bool, sample: int = 100_000) -> None:
    """Refuse values that do not fit the chosen preprocessing: raw counts when scgrn normalises
    ([`check_raw_counts`]), already-normalised values when it does not (integer counts are refused then, since
    they would be taken as log1p values)."""
    if normalize:
        check_raw_counts(matrix, sample)
        return
    data = _sampled_values(matrix, sample)
    if (np.abs(data - np.rint(data)) <= 1e-3).mean() > 0.99:
        raise ValueError(
            "normalize=False (--no_normalize) takes already log1p-normalised values, but these are whole numbers, "
            "like raw counts; drop --no_normalize so that scgrn normalises them.")


def check_raw_counts(matrix, sample: int = 100_000) -> None:
    """Refuse data that are not raw counts (log-normalised or scaled), naming what was found."""
    data = _sampled_values(matrix, sample)
    if not np.isfinite(data).all() or (data < 0).any():
        raise ValueError("the expression matrix holds NaN, infinite or negative values; raw counts are needed.")
    fractional = np.abs(data - np.rint(data)) > 1e-3
    if fractional.mean() > 0.01:
        raise ValueError(
            f"{fractional.mean():.0%} of sampled values are not integers: this looks like normalised or log data. "
            "Pass raw counts (adata.layers['counts'] or adata.raw), or tokenize with normalize=False "
            "(data/tokenize_cells.py --no_normalize) if the values are already log1p-normalised."
        )


def qc_masks(adata, *, min_genes: int = 0, min_cells: int = 0, layer: str | None = None,
             chunk_size: int = DataConfig.chunk_size) -> tuple[np.ndarray, np.ndarray, dict]:
    """Quality-control filters as scanpy's `filter_cells(min_genes)` / `filter_genes(min_cells)`, computed chunk
    by chunk over the rows (backed AnnData too). Returns `(cells_kept, genes_kept, report)` boolean masks and the
    counts dropped. Genes are counted on all cells, cells on all genes (both filters read the raw matrix once)."""
    import scipy.sparse as sp

    matrix = adata.X if layer is None else adata.layers[layer]
    genes_per_cell = np.zeros(adata.n_obs, dtype=np.int64)
    cells_per_gene = np.zeros(adata.n_vars, dtype=np.int64)
    if min_genes > 0 or min_cells > 0:
        for start in range(0, adata.n_obs, chunk_size):
            chunk = matrix[start : start + chunk_size]
            chunk = sp.csr_matrix(chunk) if not sp.issparse(chunk) else chunk.tocsr()
            chunk.eliminate_zeros()
            genes_per_cell[start : start + chunk.shape[0]] = np.diff(chunk.indptr)
            cells_per_gene += np.bincount(chunk.indices, minlength=adata.n_vars)
    cells_kept = genes_per_cell >= min_genes
    genes_kept = cells_per_gene >= min_cells
    report = {"min_genes": min_genes, "min_cells": min_cells, "cells_in": int(adata.n_obs),
              "cells_dropped_min_genes": int((~cells_kept).sum()), "genes_in": int(adata.n_vars),
              "genes_dropped_min_cells": int((~genes_kept).sum())}
    if not cells_kept.any():
        raise ValueError(f"no cell has at least {min_genes} detected genes (min_genes); lower --min_genes.")
    if not genes_kept.any():
        raise ValueError(f"no gene is detected in at least {min_cells} cells (min_cells); lower --min_cells.")
    if report["cells_dropped_min_genes"] or report["genes_dropped_min_cells"]:
        logger.warning("QC dropped %d of %d cells (fewer than %d genes) and %d of %d genes (in fewer than %d cells).",
                       report["cells_dropped_min_genes"], adata.n_obs, min_genes, report["genes_dropped_min_cells"],
                       adata.n_vars, min_cells)
    return cells_kept, genes_kept, report


def _arrow_columns(encoded, lengths: np.ndarray) -> dict:
    """Ragged Arrow list columns straight from the padded arrays (no Python lists)."""
    import pyarrow as pa

    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    keep = np.arange(encoded["input_ids"].shape[1])[None, :] < lengths[:, None]
    columns = {}
    for name in SEQUENCE_COLUMNS:
        if name in encoded:
            values = np.asarray(encoded[name])[keep]
            values = values.astype(np.float32 if name == "expression_values" else np.int32, copy=False)
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(values))
    columns["length"] = pa.array(lengths.astype(np.int32))
    return columns


def _tokenize_rows(adata, matrix, tokenizer, gene_names, start, stop, cells_kept, obs_columns, max_length,
                   normalize, reuse: dict | None = None):
    """Tokenize rows `start:stop` (those kept by QC) into an Arrow table, and the tokenizer's report. With `reuse`
    (see `encode_rows_flat`), the table is valid only until the next call with the same dict."""
    import pyarrow as pa

    chunk = matrix[start:stop]
    kept = None if cells_kept is None else cells_kept[start:stop]
    if kept is not None and not kept.all():
        chunk = chunk[np.flatnonzero(kept)]
    columns, report = encode_chunk(chunk, tokenizer, gene_names, max_length, normalize, reuse)
    for column in obs_columns:
        values = adata.obs[column].iloc[start:stop]
        if kept is not None:
            values = values[kept]
        columns[column] = pa.array(values.astype(str).tolist())
    return pa.table(columns), report


def encode_chunk(chunk, tokenizer, gene_names, max_length: int | None, normalize: bool = True,
                 reuse: dict | None = None) -> tuple[dict, dict]:
    """Tokenize a `(cells, genes)` matrix of raw counts (or normalised values with `normalize=False`) into ragged
    Arrow columns (`input_ids`, `expression_values`, `expression_bins`, `length`) and the tokenizer's report: the
    compiled encoder where it applies, the tokenizer's own path otherwise (identical tokens either way). Every
    reader (AnnData chunks, SOMA blocks) goes through here, so the same cells give the same tokens."""
    fast = _encode_compiled(chunk, tokenizer, gene_names, max_length, reuse) if normalize else None
    if fast is not None:
        return fast
    encoded = tokenizer.encode_cells(chunk, gene_names, max_length=max_length, normalize=normalize,
                                     return_tensors="np")
    return _arrow_columns(encoded, encoded["attention_mask"].sum(1)), dict(tokenizer.last_report)


def _encode_compiled(chunk, tokenizer, gene_names, max_length, reuse: dict | None = None):
    """The compiled per-row encoder (`fast_tokenize`) where it applies: Arrow columns and the tokenizer-style
    report, or None (then the tokenizer's own path runs; both give identical tokens, values and bins)."""
    import pyarrow as pa
    import scipy.sparse as sp

    from .fast_tokenize import encode_rows_flat
    from .tokenization_scgrn import _check_no_empty_cells

    column_ids = tokenizer.gene_ids(gene_names)
    known = column_ids[column_ids >= 0]
    if known.size == 0 or np.unique(known).size < known.size or not sp.issparse(chunk):
        return None
    csr = chunk.tocsr()
    flat = encode_rows_flat(csr, column_ids, target_sum=tokenizer.target_sum, n_bins=tokenizer.n_bins,
                            max_length=max_length, cls_token_id=tokenizer.cls_token_id,
                            vocab_size=tokenizer.vocab_size, reuse=reuse)
    if flat is None:
        return None
    offsets, ids, values, bins, known_per_cell = flat
    _check_no_empty_cells(known_per_cell)
    arrow_offsets = pa.array(offsets.astype(np.int32))
    lengths = np.diff(offsets)
    columns = {"input_ids": pa.ListArray.from_arrays(arrow_offsets, pa.array(ids)),
               "expression_values": pa.ListArray.from_arrays(arrow_offsets, pa.array(values))}
    if tokenizer.n_bins:
        columns["expression_bins"] = pa.ListArray.from_arrays(arrow_offsets, pa.array(bins))
    columns["length"] = pa.array(lengths.astype(np.int32))
    unknown = [str(g) for g, i in zip(gene_names, column_ids) if i < 0]
    limit = None if max_length is None else max_length - 1
    report = {
        "cells": int(csr.shape[0]),
        "genes_in_input": len(gene_names),
        "genes_unknown_to_vocabulary": len(unknown),
        "unknown_genes_examples": unknown[:10],
        "duplicate_gene_entries_summed": 0,
        "cells_truncated_to_max_length": 0 if limit is None else int((known_per_cell > limit).sum()),
        "mean_genes_per_cell": float((lengths - 1).mean()),
    }
    return columns, report


_WORKER_STATE: dict = {}
_THREAD_BUFFERS = threading.local()


def _tokenize_to_file(bounds):
    """Tokenize one chunk and write it as an Arrow file (in the parent or in a `num_proc` worker); returns its path
    and the tokenizer's report."""
    import pyarrow as pa

    state = _WORKER_STATE
    # each thread (or worker process) writes its chunks through buffers it keeps: a chunk's table is written and
    # dropped before the same thread encodes the next one
    reuse = _THREAD_BUFFERS.__dict__.setdefault("reuse", {})
    table, report = _tokenize_rows(state["adata"], state["matrix"], state["tokenizer"], state["gene_names"],
                                   *bounds, state["cells_kept"], state["obs_columns"], state["max_length"],
                                   state["normalize"], reuse)
    path = os.path.join(state["folder"], f"chunk-{bounds[0]:012d}.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    del table
    return path, report


def tokenize_anndata(
    adata,
    tokenizer,
    *,
    obs_columns: list[str] | tuple[str, ...] = (),
    max_length: int | None = DataConfig.max_length,
    chunk_size: int = DataConfig.chunk_size,
    gene_column: str | None = None,
    layer: str | None = None,
    normalize: bool = True,
    cells_kept: np.ndarray | None = None,
    num_proc: int = 1,
    show_progress: bool = True,
):
    """Tokenize every cell into a `datasets.Dataset` with `input_ids`, `expression_values` (float32),
    `expression_bins` (ragged Arrow lists, no padding), `length` and the requested `obs` columns.

    Works chunk by chunk over CSR rows (backed AnnData too), so memory follows `chunk_size`, not the file.
    `cells_kept`: boolean mask of the cells to keep (from [`qc_masks`]). `num_proc > 1` tokenizes chunks in that
    many forked worker processes, each writing Arrow files that the dataset then memory-maps (Linux/macOS).
    Returns the dataset and the tokenizer's report summed over chunks."""
    from concurrent.futures import ThreadPoolExecutor

    import datasets
    import pyarrow as pa
    from datasets.fingerprint import generate_random_fingerprint

    missing = [c for c in obs_columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"adata.obs has no column(s) {missing}; columns are {list(adata.obs.columns)}.")
    if adata.n_obs == 0:
        raise ValueError("the AnnData holds no cells.")
    gene_names = list(adata.var[gene_column].astype(str)) if gene_column else list(adata.var_names)
    matrix = adata.X if layer is None else adata.layers[layer]
    check_expression_values(matrix[: min(adata.n_obs, 1000)], normalize)
    bounds = [(start, min(start + chunk_size, adata.n_obs)) for start in range(0, adata.n_obs, chunk_size)]
    progress = tqdm(total=len(bounds), desc="tokenizing", disable=not show_progress, unit="chunk")
    reports, tables = [], []
    # chunks go to Arrow files that are memory-mapped back, so memory follows chunk_size, not the file; the files
    # are unlinked at once (open maps stay valid until the dataset is gone)
    folder = tempfile.mkdtemp(prefix="scgrn-tokenize-")
    _WORKER_STATE.update(adata=adata, matrix=matrix, tokenizer=tokenizer, gene_names=gene_names,
                         cells_kept=cells_kept, obs_columns=tuple(obs_columns), max_length=max_length,
                         normalize=normalize, folder=folder)
    try:
        if num_proc > 1 and len(bounds) > 1:
            import multiprocessing

            pool = multiprocessing.get_context("fork").Pool(min(num_proc, len(bounds)))
            results = pool.imap(_tokenize_to_file, bounds)
        else:
            # two threads in this process: one chunk is read (h5py) or written (Arrow) while the other is encoded
            # (the compiled encoder releases the GIL), so I/O overlaps encoding; at most two chunks in memory
            pool = ThreadPoolExecutor(max_workers=min(2, len(bounds)))
            results = pool.map(_tokenize_to_file, bounds)
        try:
            for path, report in results:
                with pa.memory_map(path) as source:
                    tables.append(pa.ipc.open_stream(source).read_all())
                reports.append(report)
                progress.update()
        finally:
            if isinstance(pool, ThreadPoolExecutor):
                pool.shutdown(cancel_futures=True)
            else:
                pool.close()
                pool.join()
    finally:
        _WORKER_STATE.clear()
        shutil.rmtree(folder, ignore_errors=True)
    progress.close()
    report = {}
    for part in reports:
        for key, value in part.items():
            if isinstance(value, (int, float)) and key not in ("genes_in_input", "genes_unknown_to_vocabulary"):
                report[key] = report.get(key, 0) + value
            else:
                report[key] = value
    table = pa.concat_tables(tables)
    report["mean_genes_per_cell"] = float(pa.compute.mean(table["length"]).as_py() - 1)
    # an explicit fingerprint: deriving one would hash every byte of the table
    return datasets.Dataset(table, fingerprint=generate_random_fingerprint()), report


def stream_anndata(adata, tokenizer, *, obs_columns=(), max_length: int | None = DataConfig.max_length,
                   chunk_size: int = DataConfig.chunk_size,
                   gene_column: str | None = None, layer: str | None = None, normalize: bool = True,
                   cells_kept: np.ndarray | None = None):
    """A `datasets.IterableDataset` that tokenizes cells chunk by chunk as it is iterated: nothing tokenized is
    stored, for corpora that do not fit on disk once tokenized. Same columns as [`tokenize_anndata`]."""
    import datasets

    missing = [c for c in obs_columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"adata.obs has no column(s) {missing}; columns are {list(adata.obs.columns)}.")
    gene_names = list(adata.var[gene_column].astype(str)) if gene_column else list(adata.var_names)
    matrix = adata.X if layer is None else adata.layers[layer]
    check_expression_values(matrix[: min(adata.n_obs, 1000)], normalize)

    def cells(starts):
        for start in starts:
            table, _ = _tokenize_rows(adata, matrix, tokenizer, gene_names, start,
                                      min(start + chunk_size, adata.n_obs), cells_kept, tuple(obs_columns),
                                      max_length, normalize)
            yield from table.to_pylist()

    # one shard per chunk, so datasets can spread chunks over DataLoader workers
    return datasets.IterableDataset.from_generator(
        cells, gen_kwargs={"starts": list(range(0, adata.n_obs, chunk_size))}
    )


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


def read_cells(source, backed: bool = False):
    """An AnnData from an `.h5ad` path, or scanpy's bundled `pbmc68k_reduced` (raw counts recovered) by name; an
    AnnData object is taken as it is. `backed=True` opens the file read-only without loading the matrix (files
    larger than memory)."""
    import anndata

    if isinstance(source, anndata.AnnData):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cells must be an AnnData, an .h5ad path or 'pbmc68k_reduced', not {type(source).__name__}.")
    if source == "pbmc68k_reduced":
        return pbmc68k_reduced_counts()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give an .h5ad file or 'pbmc68k_reduced').")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-download or re-export it.")
    try:
        return anndata.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # h5py/anndata raise many types for damaged files
        raise ValueError(f"{path} could not be read as an .h5ad file ({type(error).__name__}: {error}); the file is "
                         "corrupt or truncated.") from error


def read_cells_from(sources: str | list[str], backed: bool = False):
    """One AnnData from one or several sources (`read_cells` each); several are joined on the union of their genes
    (absent genes count 0) with a `dataset` obs column naming the source of each cell."""
    import anndata

    if not isinstance(sources, (list, tuple)):
        return read_cells(sources, backed)
    if len(sources) == 1:
        return read_cells(sources[0], backed)
    if backed:
        raise ValueError("backed mode reads one .h5ad at a time; tokenize each file to its own folder (or join "
                         "them in memory without --backed).")
    parts = {}
    for number, source in enumerate(sources):
        adata = read_cells(source)
        if isinstance(source, (str, os.PathLike)):
            name = Path(source).stem if source != "pbmc68k_reduced" else source
        else:
            name, adata = f"adata{number}", adata.copy()  # var_names_make_unique must not change the caller's
        adata.var_names_make_unique()
        parts[name] = adata
    return anndata.concat(parts, join="outer", label="dataset", index_unique="-", fill_value=0)


def describe_sources(sources) -> list[dict]:
    """What a dataset was made from, safe to publish: each file's name and SHA-256 (never its path), scanpy's
    bundled dataset by name, or an in-memory AnnData by its shape."""
    described = []
    for source in sources if isinstance(sources, (list, tuple)) else [sources]:
        if not isinstance(source, (str, os.PathLike)):
            described.append({"name": f"AnnData object ({source.n_obs} cells x {source.n_vars} genes)"})
        elif source == "pbmc68k_reduced":
            described.append({"name": "pbmc68k_reduced (bundled with scanpy)"})
        else:
            described.append({"name": Path(source).name, "sha256": file_sha256(source)})
    return described


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
    check_output_folder(output_dir, overwrite=overwrite, inputs=paths)
    columns = [c for c in (label_column, group_column, *obs_columns) if c]
    tokenizer = _given_tokenizer(tokenizer, data)
    adata = _read_for_tokenizing(source, data, columns, label_column)
    cells_kept, genes_kept, qc_report = qc_masks(adata, min_genes=data.min_genes, min_cells=data.min_cells,
                                                 chunk_size=data.chunk_size)
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


def _gene_panel(adata, network, data: DataConfig, tokenizer, cells_kept, genes_kept) -> tuple[list, dict]:
    """The genes of the vocabulary and how they were chosen: the given tokenizer's, every gene kept by QC, or a
    (prior-aware) variable-gene panel."""
    from .networks import select_gene_panel

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
