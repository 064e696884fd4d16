"""A compiled (numba) per-row encoder for `tokenize_anndata`: the same tokens, values and bins as
`ScGrnTokenizer.encode_cells(normalize=True, rank_by="expression")`, written straight into flat ragged arrays
(no padded matrices), one pass over each CSR row. numba comes with scanpy; without it, or for inputs it does not
cover (non-integer counts, two columns naming one gene), the tokenizer's vectorised numpy path is used."""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - scanpy requires numba
    numba = None


OK, BAD_VALUES, NOT_COUNTS = 0, 1, 2  # status of a chunk


def _stopped(status, known_per_cell):
    """What the kernel returns for a chunk it does not encode (same types as a full result, empty arrays)."""
    return (status, np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32),
            np.empty(0, dtype=np.int32), known_per_cell)


def _kernel(indptr, indices, data, column_ids, target_sum, n_bins, limit, cls_id, vocab_size, ids_ascending,
            buffer_ids, buffer_values, buffer_bins):
    num_cells = indptr.size - 1
    # one pass over the chunk: per cell, genes known to the vocabulary, total counts and the largest count; the
    # same pass checks the values (finite, non-negative, integer) and that each row's columns are sorted
    known_per_cell = np.zeros(num_cells, dtype=np.int64)
    totals = np.zeros(num_cells, dtype=np.float64)
    tops = np.zeros(num_cells, dtype=np.int64)
    status = OK
    rows_sorted = True
    for row in range(num_cells):
        count = 0
        total = 0.0
        top = 0
        for k in range(indptr[row], indptr[row + 1]):
            value = np.float64(data[k])
            if value != value or value == np.inf or value < 0:
                return _stopped(BAD_VALUES, known_per_cell)
            if value != np.floor(value):
                status = NOT_COUNTS
            if k > indptr[row] and indices[k] <= indices[k - 1]:
                rows_sorted = False
            total += value
            if value > 0 and column_ids[indices[k]] >= 0:
                count += 1
                if np.int64(value) > top:
                    top = np.int64(value)
        known_per_cell[row] = count
        totals[row] = total
        tops[row] = top
    if status != OK:
        return _stopped(status, known_per_cell)
    ids_ascending = ids_ascending and rows_sorted
    lengths = np.empty(num_cells, dtype=np.int64)
    for row in range(num_cells):
        kept = known_per_cell[row]
        if limit >= 0 and kept > limit:
            kept = limit
        lengths[row] = kept + 1
    offsets = np.zeros(num_cells + 1, dtype=np.int64)
    for row in range(num_cells):
        offsets[row + 1] = offsets[row] + lengths[row]
    total_tokens = offsets[num_cells]
    out_ids = buffer_ids[:total_tokens]  # the caller's buffers hold at least nonzeros + cells entries
    out_values = buffer_values[:total_tokens]
    out_bins = buffer_bins[:total_tokens]
    # buffers shared by all cells of the chunk
    widest = 1
    highest = 0
    for row in range(num_cells):
        widest = max(widest, known_per_cell[row])
        highest = max(highest, tops[row])
    counts = np.empty(widest, dtype=np.int64)
    ids = np.empty(widest, dtype=np.int64)
    order = np.empty(widest, dtype=np.int64)
    histogram = np.zeros(min(highest, 4 * widest + 1024) + 2, dtype=np.int64)
    for row in range(num_cells):
        start, stop = indptr[row], indptr[row + 1]
        total = totals[row]
        n = known_per_cell[row]
        top = tops[row]
        j = 0
        for k in range(start, stop):
            token = column_ids[indices[k]]
            if data[k] > 0 and token >= 0:
                counts[j] = np.int64(data[k])
                ids[j] = token
                j += 1
        if ids_ascending and top <= 4 * n + 1024:
            # entries already run in token-id order: a stable counting sort by count descending gives
            # (count descending, id ascending) in O(n + top)
            histogram[: top + 2] = 0
            for e in range(n):
                histogram[top - counts[e] + 1] += 1
            for c in range(1, top + 2):
                histogram[c] += histogram[c - 1]
            for e in range(n):
                slot = top - counts[e]
                order[histogram[slot]] = e
                histogram[slot] += 1
        else:
            keys = (top - counts[:n]) * vocab_size + ids[:n]  # count descending, then token id ascending (ids unique)
            order[:n] = np.argsort(keys)
        base = offsets[row]
        out_ids[base] = cls_id
        out_values[base] = 0.0
        out_bins[base] = 0
        keep = lengths[row] - 1
        group_start = 0
        value = 0.0
        for rank in range(keep):
            e = order[rank]
            if rank == 0 or counts[e] != counts[order[rank - 1]]:
                # genes with equal counts share their value and bin: computed once per group of equal counts
                group_start = rank
                value = np.log1p(counts[e] / total * target_sum)
            out_ids[base + 1 + rank] = ids[e]
            out_values[base + 1 + rank] = value
            if n_bins > 0:
                out_bins[base + 1 + rank] = n_bins - (group_start * n_bins) // n
            else:
                out_bins[base + 1 + rank] = 0
    return OK, offsets, out_ids, out_values, out_bins, known_per_cell


if numba is not None:
    _stopped = numba.njit(cache=True)(_stopped)
    _compiled = numba.njit(cache=True, nogil=True)(_kernel)
else:  # pragma: no cover - scanpy requires numba
    _compiled = None


def held_arrays(reuse: dict | None, key: str, specs) -> tuple:
    """Arrays of the `(size, dtype)`s in `specs`: views of those kept in `reuse[key]` (a dict the caller keeps across
    calls, e.g. one per thread), new ones (a quarter larger, room for the next call's) when any is missing, too
    small or of another dtype; plain new arrays without `reuse`. Reused memory is not faulted in afresh on every
    call, which a chunk's or a read's fresh arrays cost (benchmarks/README.md, "`soma_stream.py`")."""
    held = None if reuse is None else reuse.get(key)
    if held is None or any(a.size < size or a.dtype != dtype for a, (size, dtype) in zip(held, specs)):
        grow = 1 if reuse is None else 1.25
        held = tuple(np.empty(int(size * grow), dtype) for size, dtype in specs)
        if reuse is not None:
            reuse[key] = held
    return tuple(a[:size] for a, (size, _) in zip(held, specs))


def encode_rows_flat(csr, column_ids: np.ndarray, *, target_sum: float, n_bins: int, max_length: int | None,
                     cls_token_id: int, vocab_size: int, reuse: dict | None = None):
    """Flat encoding of a CSR chunk of integer counts: `(offsets, ids, values, bins, known_genes_per_cell)`.
    Returns None where the compiled path does not apply (no numba, or non-integer counts). Raises the tokenizer's
    ValueError for NaN, infinite or negative values (checked in the encoder's own pass over the chunk).

    `reuse`: a dict the caller keeps across chunks; the ids, values and bins are then written into its buffers
    (grown when a chunk needs more), which saves mapping and faulting in fresh memory for every chunk, so they are
    valid only until the next call with the same dict."""
    if _compiled is None:
        return None
    limit = -1 if max_length is None else max_length - 1
    known = column_ids[column_ids >= 0]
    ids_ascending = bool(np.all(np.diff(known) > 0))  # the kernel also checks each row's columns are sorted
    needed = int(csr.nnz) + csr.shape[0]  # at most one token per stored entry, plus [CLS]
    buffers = held_arrays(reuse, "buffers", [(needed, np.int32), (needed, np.float32), (needed, np.int32)])
    # indices and data keep their dtypes (numba compiles one version per dtype): no copies of the chunk
    status, *flat = _compiled(csr.indptr.astype(np.int64), csr.indices, csr.data,
                              column_ids.astype(np.int64), float(target_sum), int(n_bins or 0), int(limit),
                              int(cls_token_id), int(vocab_size), ids_ascending, *buffers)
    if status == BAD_VALUES:
        from ..model.tokenization_scgrn import _check_values

        _check_values(np.asarray(csr.data))  # raises, naming how many NaN / infinite / negative entries
        raise AssertionError("the encoder found bad values that the tokenizer's check did not")  # pragma: no cover
    return None if status == NOT_COUNTS else tuple(flat)
