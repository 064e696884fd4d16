"""Tokenizing cells into Arrow: chunked, threaded, with the compiled encoder where numba is installed, into a
`datasets.Dataset` saved atomically, or streamed from AnnData.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .config import SEQUENCE_COLUMNS, DataConfig
from .reading import check_expression_values


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

    from ..model.tokenization_scgrn import _check_no_empty_cells
    from .fast_tokenize import encode_rows_flat

    column_ids = tokenizer.gene_ids(gene_names)
    applies, unknown = _gene_plan(column_ids, gene_names)
    if not applies or not sp.issparse(chunk):
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


_GENE_PLAN: list = [None]


def _gene_plan(column_ids: np.ndarray, gene_names) -> tuple[bool, list]:
    """Whether the compiled encoder applies to these columns (some known to the vocabulary, none twice) and the
    names unknown to it. Kept for the last `column_ids`, which the tokenizer returns as one read-only array for
    as long as the gene list is the same: every chunk of one file or experiment asks for the same plan."""
    cached = _GENE_PLAN[0]
    if cached is not None and cached[0] is column_ids:
        return cached[1]
    known = column_ids[column_ids >= 0]
    plan = (known.size > 0 and np.unique(known).size == known.size,
            [str(g) for g, i in zip(gene_names, column_ids) if i < 0])
    if not column_ids.flags.writeable:
        _GENE_PLAN[0] = (column_ids, plan)
    return plan


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


CHUNK_FOLDER_PREFIX = "scgrn-tokenize-"


def remove_stale_chunk_folders() -> int:
    """Remove the temporary chunk folders of tokenizing runs on this machine whose process is gone (killed before
    its own cleanup); returns how many were removed."""
    removed = 0
    for folder in Path(tempfile.gettempdir()).glob(f"{CHUNK_FOLDER_PREFIX}*-*"):
        pid = folder.name[len(CHUNK_FOLDER_PREFIX):].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        except (PermissionError, OverflowError):
            continue
    return removed


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
    try:
        check_expression_values(matrix[: min(adata.n_obs, 1000)], normalize)
    except ValueError as error:
        found = [name for name in ("counts", "raw_counts") if name in adata.layers and name != layer]
        if not found and adata.raw is None:
            raise
        where = f"adata.layers[{found[0]!r}]" if found else "adata.raw"
        raise ValueError(f"{error} These cells hold {where}, which may be the counts.") from None
    bounds = [(start, min(start + chunk_size, adata.n_obs)) for start in range(0, adata.n_obs, chunk_size)]
    progress = tqdm(total=len(bounds), desc="tokenizing", disable=not show_progress, unit="chunk")
    reports, tables = [], []
    # chunks go to Arrow files that are memory-mapped back, so memory follows chunk_size, not the file; each file is
    # unlinked once mapped (the map stays valid until the dataset is gone), so a killed run leaves at most the
    # chunks written but not yet read back, and the next run removes the folders of runs that died
    remove_stale_chunk_folders()
    folder = tempfile.mkdtemp(prefix=f"{CHUNK_FOLDER_PREFIX}{os.getpid()}-")
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
                os.unlink(path)
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


def compact_tokens(values: np.ndarray) -> np.ndarray:
    """A writable copy of a token column, integers in the smallest unsigned type that holds them (ids of a
    vocabulary under 65,536 in 2 bytes, bins in 1; collators pad every row to int64 as before). A SOMA stream holds
    two windows of 32,768 cells at once: 7 bytes a token instead of 12 took its peak from about 1,900 to 1,800 MiB
    at 200,000 cells (benchmarks/README.md)."""
    if values.dtype.kind != "i" or values.size == 0 or values.min() < 0:
        return np.array(values)  # torch refuses (with a warning) to wrap the read-only Arrow buffers
    return values.astype(np.min_scalar_type(int(values.max())))


def table_rows(table) -> list[dict]:
    """Per-cell dicts of numpy arrays (no Python lists) from a tokenized table (what a SOMA stream holds),
    integers compacted."""
    sequences = {}
    for name in ("input_ids", "expression_values", "expression_bins"):
        if name in table.column_names:
            column = table[name].combine_chunks()
            values = column.values.to_numpy(zero_copy_only=False)
            sequences[name] = (column.offsets.to_numpy(), compact_tokens(values))
    scalars = {name: table[name].to_pylist() for name in table.column_names if name not in sequences}
    rows = []
    for i in range(table.num_rows):
        row = {name: values[offsets[i]:offsets[i + 1]] for name, (offsets, values) in sequences.items()}
        row.update({name: values[i] for name, values in scalars.items()})
        rows.append(row)
    return rows
