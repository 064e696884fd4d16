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


def _kernel(indptr, indices, data, column_ids, target_sum, n_bins, limit, cls_id, vocab_size, ids_ascending):
    num_cells = indptr.size - 1
    # one pass over the chunk: per cell, genes known to the vocabulary, total counts and the largest count
    known_per_cell = np.zeros(num_cells, dtype=np.int64)
    totals = np.zeros(num_cells, dtype=np.float64)
    tops = np.zeros(num_cells, dtype=np.int64)
    for row in range(num_cells):
        count = 0
        total = 0.0
        top = 0
        for k in range(indptr[row], indptr[row + 1]):
            total += np.float64(data[k])
            if data[k] > 0 and column_ids[indices[k]] >= 0:
                count += 1
                if np.int64(data[k]) > top:
                    top = np.int64(data[k])
        known_per_cell[row] = count
        totals[row] = total
        tops[row] = top
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
    out_ids = np.empty(total_tokens, dtype=np.int32)
    out_values = np.empty(total_tokens, dtype=np.float32)
    out_bins = np.empty(total_tokens, dtype=np.int32)
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
    return offsets, out_ids, out_values, out_bins, known_per_cell


_compiled = numba.njit(cache=True, nogil=True)(_kernel) if numba is not None else None


def encode_rows_flat(csr, column_ids: np.ndarray, *, target_sum: float, n_bins: int, max_length: int | None,
                     cls_token_id: int, vocab_size: int):
    """Flat encoding of a CSR chunk of integer counts: `(offsets, ids, values, bins, known_genes_per_cell)`.
    Returns None where the compiled path does not apply (no numba, or non-integer counts)."""
    if _compiled is None:
        return None
    data = csr.data
    if data.size and not np.array_equal(data, np.floor(data)):
        return None
    limit = -1 if max_length is None else max_length - 1
    known = column_ids[column_ids >= 0]
    ids_ascending = bool(csr.has_sorted_indices and np.all(np.diff(known) > 0))
    # indices and data keep their dtypes (numba compiles one version per dtype): no copies of the chunk
    return _compiled(csr.indptr.astype(np.int64), csr.indices, data,
                     column_ids.astype(np.int64), float(target_sum), int(n_bins or 0), int(limit),
                     int(cls_token_id), int(vocab_size), ids_ascending)
