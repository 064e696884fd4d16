"""Counts matrices assembled from coordinate tables, as a TileDB-SOMA read returns them (`soma_dim_0`,
`soma_dim_1`, `soma_data`; one table per read round, entries in tile order, not row by row).

A compiled (numba) kernel buckets the entries by row in three passes over them, without the GIL, finding each
entry's row and gene column itself: it replaces scipy's COO -> CSR conversion and the int64 -> int32 copies and
lookups before it (about 30 of the 200-250 ms of CPU a read of 2,048 cells took). With `reuse` it writes into
buffers that a reading thread keeps, so a read does not fault in fresh memory for its matrix (page faults, mostly
TileDB's own, were about 40% of a SOMA stream's CPU time: benchmarks/README.md, "`soma_stream.py`"). Without numba,
scipy does the same.
"""

from __future__ import annotations

import numpy as np

from .fast_tokenize import held_arrays

SORTED, UNSORTED, OUTSIDE = 0, 1, 2  # what the kernel found

try:
    import numba
except ImportError:  # pragma: no cover - scanpy requires numba
    numba = None


def _bucket(found, offset, row_lookup, columns, column_lookup, values, n_rows, indptr, indices, data):
    """Entry k goes to row `found[k] - offset` (through `row_lookup` when it is not empty), column `columns[k]`
    (through `column_lookup` when it is not empty), in the order the entries come. Fills `indptr` (n_rows + 1),
    `indices` and `data`; returns SORTED when every row's columns are strictly ascending, UNSORTED when not
    (repeated or out of order), OUTSIDE (nothing filled in) when an entry falls outside the matrix."""
    rows_mapped, columns_mapped = row_lookup.size > 0, column_lookup.size > 0
    indptr[:] = 0
    for k in range(found.size):
        row = found[k] - offset
        if rows_mapped:
            row = row_lookup[row] if 0 <= row < row_lookup.size else -1
        column = columns[k]
        if row < 0 or row >= n_rows or column < 0 or (columns_mapped and column >= column_lookup.size):
            return OUTSIDE
        indptr[row + 1] += 1
    for row in range(n_rows):
        indptr[row + 1] += indptr[row]
    cursor = indptr[:-1].copy()
    for k in range(found.size):
        row = found[k] - offset
        if rows_mapped:
            row = row_lookup[row]
        slot = cursor[row]
        cursor[row] = slot + 1
        indices[slot] = column_lookup[columns[k]] if columns_mapped else columns[k]
        data[slot] = values[k]
    for row in range(n_rows):
        for slot in range(indptr[row] + 1, indptr[row + 1]):
            if indices[slot] <= indices[slot - 1]:
                return UNSORTED
    return SORTED


_compiled = numba.njit(cache=True, nogil=True)(_bucket) if numba is not None else None


def _row_map(joinids: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """How the kernel finds an entry's row: `(keys, offset, lookup)` with row = lookup[key - offset], or
    row = key - offset where the lookup is empty. The keys are the joinids TileDB returned, with an offset for a
    contiguous range of cells and a lookup table for a compact span; for a sparse span they are the rows
    themselves, found by binary search (a table as long as the span would be too large)."""
    low, span = int(joinids[0]), int(joinids[-1] - joinids[0]) + 1
    if span == joinids.size:
        return found, low, np.zeros(0, np.int64)
    if span > 16 * joinids.size:
        rows = np.searchsorted(joinids, found)
        rows[joinids[np.minimum(rows, joinids.size - 1)] != found] = -1  # not among the cells: refused by the kernel
        return rows, 0, np.zeros(0, np.int64)
    lookup = np.full(span, -1, dtype=np.int64)
    lookup[joinids - low] = np.arange(joinids.size)
    return found, low, lookup


def csr_from_coordinates(tables, joinids: np.ndarray, n_columns: int, column_lookup: np.ndarray | None,
                         reuse: dict | None = None):
    """The sorted CSR matrix `(len(joinids), n_columns)` of the entries in `tables` (Arrow tables with
    `soma_dim_0`, `soma_dim_1`, `soma_data`): row `i` is the cell `joinids[i]` (sorted, unique), column `j` the gene
    whose joinid `column_lookup` maps to `j` (`None`: the joinid is the column). Entries repeated at one position are
    summed, as scipy does. `reuse`: a dict the caller keeps across reads; the matrix then lives in its buffers and
    is valid only until the next call with the same dict."""
    import scipy.sparse as sp

    dims = [[t[name].to_numpy() for t in tables] for name in ("soma_dim_0", "soma_dim_1", "soma_data")]
    n_rows = len(joinids)
    if not dims[0] or not sum(p.size for p in dims[0]):
        return sp.csr_matrix((n_rows, n_columns), dtype=np.float32)
    found, columns, values = (np.concatenate(p) if len(p) > 1 else p[0] for p in dims)
    if _compiled is None:  # pragma: no cover - scanpy requires numba
        matrix = sp.csr_matrix((values, (np.searchsorted(joinids, found),
                                         columns if column_lookup is None else column_lookup[columns])),
                               shape=(n_rows, n_columns))
        matrix.sum_duplicates()
        return matrix
    keys, offset, row_lookup = _row_map(joinids, found)
    # 32-bit row offsets where they fit, so that scipy keeps the 32-bit column indices as they are
    index_type = np.int32 if found.size < 2**31 else np.int64
    indptr, indices, data = held_arrays(reuse, "coordinates", [(n_rows + 1, index_type), (found.size, np.int32),
                                                              (found.size, values.dtype)])
    lookup = np.zeros(0, np.int64) if column_lookup is None else column_lookup
    status = _compiled(keys, offset, row_lookup, columns, lookup, values, n_rows, indptr, indices, data)
    if status == OUTSIDE:
        raise ValueError(f"the read returned entries outside the {n_rows} cells or {n_columns} genes asked for.")
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n_rows, n_columns), copy=False)
    if status == SORTED:
        matrix.has_sorted_indices = True
    else:
        matrix.sum_duplicates()  # sorts each row's columns and sums repeated ones
    return matrix
