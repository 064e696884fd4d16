"""Reading cells: `.h5ad` files (in memory or backed), checks that values are what a step expects (raw counts,
normalised values), and quality control.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..storage.folders import file_sha256
from .config import DataConfig

logger = logging.getLogger(__name__)


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


RAW_COUNTS_ADVICE = ("Put raw counts in adata.X (adata.X = adata.layers['counts'], or adata = adata.raw.to_adata()) "
                     "and write the .h5ad again, or tokenize with normalize=False (data/tokenize_cells.py "
                     "--no_normalize) if the values are already log1p-normalised.")


def check_raw_counts(matrix, sample: int = 100_000, advice: str = RAW_COUNTS_ADVICE) -> None:
    """Refuse data that are not raw counts (log-normalised or scaled), naming what was found and, in `advice`,
    how the caller can give counts instead."""
    data = _sampled_values(matrix, sample)
    if not np.isfinite(data).all() or (data < 0).any():
        raise ValueError("the expression matrix holds NaN, infinite or negative values; raw counts are needed.")
    fractional = np.abs(data - np.rint(data)) > 1e-3
    if fractional.mean() > 0.01:
        raise ValueError(f"{fractional.mean():.0%} of sampled values are not integers: this looks like normalised "
                         f"or log data. {advice}")


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
    for name, source in zip(source_names(sources), sources):
        adata = read_cells(source)
        if not isinstance(source, (str, os.PathLike)):
            adata = adata.copy()  # var_names_make_unique must not change the caller's
        adata.var_names_make_unique()
        parts[name] = adata
    return anndata.concat(parts, join="outer", label="dataset", index_unique="-", fill_value=0)


def source_names(sources) -> list[str]:
    """The `dataset` label of each source: a file's stem, with as many parent folders as it takes to tell files of
    the same name apart (`a/donor`, `b/donor`); `adata<i>` for an in-memory AnnData. The same file twice is
    refused, since its cells would be counted twice."""
    paths = [Path(os.path.abspath(s)) if isinstance(s, (str, os.PathLike)) and s != "pbmc68k_reduced" else None
             for s in sources]
    seen = {}
    for source, path in zip(sources, paths):
        key = path.resolve() if path is not None else (source if isinstance(source, str) else id(source))
        if key in seen:
            raise ValueError(f"the input {source} is given twice ({seen[key]} and {source}); give each file once.")
        seen[key] = source

    def name(path: Path, depth: int) -> str:
        return "/".join([*path.parent.parts[len(path.parent.parts) - depth:], path.stem]) if depth else path.stem

    depth = 0
    while True:
        names = [name(path, depth) if path is not None else
                 (source if isinstance(source, str) else f"adata{number}")
                 for number, (source, path) in enumerate(zip(sources, paths))]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths if p is not None):
            return names
        depth += 1


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
