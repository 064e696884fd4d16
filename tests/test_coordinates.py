"""Counts matrices assembled from coordinate tables (what a TileDB-SOMA read returns) by the compiled kernel,
checked against scipy's own COO -> CSR conversion on the same entries."""

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from modeling_scgrn.cells.coordinates import csr_from_coordinates


def coordinate_table(rows, columns, values) -> pa.Table:
    return pa.table({"soma_dim_0": pa.array(np.asarray(rows, np.int64)),
                     "soma_dim_1": pa.array(np.asarray(columns, np.int64)),
                     "soma_data": pa.array(np.asarray(values, np.float32))})


def tile_ordered(matrix: sp.csr_matrix, joinids, column_joinids, tile: int) -> list:
    """The matrix's entries as TileDB returns a read of row-major tiles `tile` columns wide: tile by tile, rows
    in order within each tile (so no row comes whole), in two tables as two read rounds would give."""
    coo = matrix.tocoo()
    tile_of = np.asarray(column_joinids)[coo.col] // tile
    order = np.lexsort((coo.col, coo.row, tile_of))
    rows, columns = np.asarray(joinids)[coo.row[order]], np.asarray(column_joinids)[coo.col[order]]
    half = len(order) // 2
    return [coordinate_table(rows[:half], columns[:half], coo.data[order][:half]),
            coordinate_table(rows[half:], columns[half:], coo.data[order][half:])]


@pytest.fixture
def counts():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.4, size=(40, 300)).astype(np.float32)
    dense[7] = 0  # a cell with nothing detected
    return sp.csr_matrix(dense)


@pytest.mark.parametrize("joinids", [np.arange(100, 140),                       # one contiguous range
                                     np.arange(0, 120, 3),                       # a compact span: a lookup table
                                     np.arange(40) * 1_000 + 5])                 # a sparse span: binary search
def test_rows_in_tile_order_give_scipys_matrix(counts, joinids):
    tables = tile_ordered(counts, joinids, np.arange(300), tile=64)
    matrix = csr_from_coordinates(tables, joinids, 300, None)
    assert matrix.has_sorted_indices and matrix.indices.dtype == np.int32
    assert np.array_equal(matrix.indptr, counts.indptr) and np.array_equal(matrix.indices, counts.indices)
    assert np.array_equal(matrix.data, counts.data) and matrix.data.dtype == np.float32


def test_gene_joinids_map_to_columns_and_entries_in_any_order(counts):
    rng = np.random.default_rng(1)
    joinids = np.arange(40)
    gene_joinids = np.sort(rng.choice(5_000, size=300, replace=False))
    lookup = np.full(5_000, -1, np.int64)
    lookup[gene_joinids] = np.arange(300)
    table = pa.concat_tables(tile_ordered(counts, joinids, gene_joinids, tile=64))
    shuffled = table.take(pa.array(rng.permutation(table.num_rows)))
    matrix = csr_from_coordinates([shuffled], joinids, 300, lookup)
    assert matrix.has_sorted_indices
    assert (matrix != counts).nnz == 0


def test_repeated_entries_are_summed_as_scipy_sums_them(counts):
    tables = tile_ordered(counts, np.arange(40), np.arange(300), tile=300)
    repeated = [*tables, tables[0].slice(0, 25)]
    matrix = csr_from_coordinates(repeated, np.arange(40), 300, None)
    table = pa.concat_tables(repeated)
    expected = sp.csr_matrix((table["soma_data"].to_numpy(), (table["soma_dim_0"].to_numpy(),
                                                              table["soma_dim_1"].to_numpy())), shape=(40, 300))
    assert matrix.has_sorted_indices and matrix.nnz == counts.nnz
    assert (matrix != expected).nnz == 0


def test_entries_outside_the_cells_or_genes_are_refused(counts):
    tables = tile_ordered(counts, np.arange(40), np.arange(300), tile=300)
    with pytest.raises(ValueError, match="outside"):
        csr_from_coordinates(tables, np.arange(1, 41), 300, None)  # joinid 0 was not asked for
    with pytest.raises(ValueError, match="outside"):
        csr_from_coordinates(tables, np.arange(0, 80, 2), 300, None)  # odd joinids fall between the cells
    with pytest.raises(ValueError, match="outside"):
        csr_from_coordinates(tables, np.arange(40) * 1_000, 300, None)  # a sparse span, found by binary search
    with pytest.raises(ValueError, match="outside"):
        csr_from_coordinates(tables, np.arange(40), 300, np.arange(100))  # gene joinids beyond the lookup


def test_no_entries_give_an_empty_matrix():
    empty = coordinate_table([], [], [])
    matrix = csr_from_coordinates([empty], np.arange(5), 10, None)
    assert matrix.shape == (5, 10) and matrix.nnz == 0


def test_reused_buffers_serve_the_next_read_with_the_same_result(counts):
    reuse = {}
    first = csr_from_coordinates(tile_ordered(counts, np.arange(40), np.arange(300), 64), np.arange(40), 300, None,
                                 reuse)
    held = reuse["coordinates"][1]
    assert np.shares_memory(first.indices, held)
    expected = first.copy()
    smaller = counts[:30]
    second = csr_from_coordinates(tile_ordered(smaller, np.arange(30), np.arange(300), 64), np.arange(30), 300, None,
                                  reuse)
    assert reuse["coordinates"][1] is held and np.shares_memory(second.indices, held)
    assert (second != smaller).nnz == 0
    assert (expected != counts).nnz == 0  # the copy taken before the next read is intact
