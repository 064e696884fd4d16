"""Cells streamed from a TileDB-SOMA experiment (the CELLxGENE Census format) into pretraining, without exporting
them to `.h5ad` or Arrow first.

The cells a query matches are cut into blocks of consecutive `soma_joinid`s (by default as many as one tile of the
X layer holds along the cells, so that a block is one contiguous read of whole tiles: a block of 64 cells costs a
TileDB read about as much as a tile of 2,048); each epoch visits the blocks in a new seeded order, and every
`batch_size` cells of that order form one unit (a batch). Whole blocks go to shards in turn (block `q` of the
endless sequence of epochs to shard `q mod S`, one shard per process and DataLoader worker, `S = processes x
workers`), so shards never share a cell within an epoch, together they see every cell, and no two shards read the
same tiles. A shard reads `io_batches` of its units at a time (a window; by default 16 blocks, at most half of its
share of an epoch), in storage order, on threads that run a window ahead of training; tokenizes them with the
same encoder as `.h5ad` files (`data.encode_chunk`), so the same cell gives the same tokens from either source;
and shuffles the cells of the window before cutting it into batches, so that a batch mixes the window's blocks.
(Blocks are smaller than a tile when a shard's window could not hold 16 of them.)

The sequence is a pure function of the seed, the cells and the sharding, so a position (units consumed by each
process) is all a checkpoint needs: a resumed run reads from there, repeating and skipping nothing.

Needs the optional extra `pip install 'scgrn[soma]'` (tiledbsoma, tiledbsoma-ml). Uses numpy/pandas/datasets;
never imported by the model files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .coordinates import csr_from_coordinates
from .tokenize import table_rows

logger = logging.getLogger(__name__)

GENE_COLUMNS = ("feature_name", "gene_symbols", "gene_name", "var_id", "feature_id")
STREAM_STATE_KEYS = ("order", "cells", "cells_sha256", "batch_size", "seed", "shuffle_chunk_size", "io_batches",
                     "world_size", "num_workers")
# 2: whole blocks to shards, tile-sized blocks by default (1: batches to shards in turn, blocks of 64)
ORDER_VERSION = 2
BLOCKS_PER_READ = 16  # blocks a window holds by default: what a batch mixes
READ_CELLS = 2048  # cells per TileDB read: one tile by default, and the raw counts of one read stay small
READ_THREADS = 3  # reads at once: 3 threads reached 11,000 cells/s on 2 cores, one 5,900 (benchmarks/README.md)
DEFAULT_TILE_ROWS = 2048  # tiledbsoma's default tile extent, for a layer whose schema does not say


def _tiledbsoma():
    try:
        import tiledbsoma
        import tiledbsoma_ml  # noqa: F401  (its building blocks read the blocks)
    except ImportError as error:
        raise ImportError(f"reading TileDB-SOMA needs the soma extra ({error.name} is missing): "
                          "pip install 'scgrn[soma]'") from error
    return tiledbsoma


@dataclass(frozen=True)
class SomaSource:
    """Where the cells are: a SOMA experiment (a local folder or an s3:// / tiledb:// URI), its measurement, the X
    layer of raw counts, an optional `obs` value filter (e.g. `"is_primary_data == True and tissue == 'blood'"`),
    the `var` column naming genes as the prior does (default: the first of `GENE_COLUMNS` present), and TileDB
    settings (e.g. `{"vfs.s3.region": "us-west-2"}` for the Census)."""

    uri: str
    measurement: str = "RNA"
    layer: str = "raw"
    obs_filter: str | None = None
    gene_column: str | None = None
    tiledb_config: dict | None = None

    def display_name(self) -> str:
        """The experiment by name, safe to publish: a local folder's last part (never its path), a URI as given."""
        return self.uri if "://" in self.uri else Path(self.uri).name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextmanager
def open_experiment(source: SomaSource):
    """The experiment opened for reading, with its measurement and X layer checked (each missing piece is one
    ValueError that names what is there)."""
    tiledbsoma = _tiledbsoma()
    context = tiledbsoma.SOMATileDBContext(tiledb_config=source.tiledb_config or {})
    try:
        experiment = tiledbsoma.Experiment.open(source.uri, context=context)
    except (tiledbsoma.DoesNotExistError, tiledbsoma.SOMAError, OSError) as error:
        raise ValueError(f"{source.uri} is not a TileDB-SOMA experiment ({type(error).__name__}); give the folder "
                         "tiledbsoma.io.from_anndata wrote, or a Census release with --census.") from error
    with experiment:
        measurements = list(experiment.ms.keys())
        if source.measurement not in measurements:
            raise ValueError(f"the experiment has no measurement {source.measurement!r}; it has {measurements}.")
        layers = list(experiment.ms[source.measurement].X.keys())
        if source.layer not in layers:
            raise ValueError(f"measurement {source.measurement!r} has no X layer {source.layer!r}; its layers are "
                             f"{layers} (give the one of raw counts with --layer).")
        yield experiment


@dataclass
class SomaCells:
    """The cells a query matches (`joinids`, sorted `soma_joinid`s), every gene column of the measurement
    (`var_joinids`, `gene_names`), and the source they came from."""

    source: SomaSource
    joinids: np.ndarray
    var_joinids: np.ndarray
    gene_names: list

    def __len__(self) -> int:
        return len(self.joinids)

    def subset(self, joinids) -> "SomaCells":
        return dataclasses.replace(self, joinids=np.sort(np.asarray(joinids, dtype=np.int64)))

    @functools.cached_property
    def gene_lookup(self) -> np.ndarray | None:
        """A gene's soma_joinid -> its column, or None when the columns are the joinids 0..n-1 in order (then a read
        needs no gene coordinates). Built once for the query, not per read."""
        var_joinids = self.var_joinids.astype(np.int64)
        if np.array_equal(var_joinids, np.arange(var_joinids.size)):
            return None
        lookup = np.full(int(var_joinids.max()) + 1, -1, dtype=np.int64)
        lookup[var_joinids] = np.arange(var_joinids.size)
        return lookup

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the joinids, computed once (every checkpoint records it)."""
        return hashlib.sha256(np.ascontiguousarray(self.joinids, dtype=np.int64).tobytes()).hexdigest()


def query_cells(source: SomaSource) -> SomaCells:
    """The cells `source.obs_filter` matches, with the measurement's genes named by `source.gene_column` (resolved
    to the first of `GENE_COLUMNS` present when None). An unreadable filter or one matching no cell is a
    ValueError."""
    tiledbsoma = _tiledbsoma()
    with open_experiment(source) as experiment:
        try:
            query = experiment.axis_query(source.measurement,
                                          obs_query=tiledbsoma.AxisQuery(value_filter=source.obs_filter))
            joinids = np.sort(query.obs_joinids().to_numpy().astype(np.int64))
        except (tiledbsoma.SOMAError, ValueError, TypeError) as error:
            reason = " ".join(str(error).split("At:")[0].split())  # tiledbsoma appends its own stack as text
            columns = [c for c in experiment.obs.schema.names if c != "soma_joinid"]
            raise ValueError(f"obs_filter {source.obs_filter!r} could not be applied ({reason}); write it as a TileDB "
                             f"value filter (e.g. \"tissue == 'blood' and n_genes > 200\") over the obs columns "
                             f"{columns}.") from error
        if joinids.size == 0:
            raise ValueError(f"the query matches no cells (obs_filter {source.obs_filter!r} over "
                             f"{experiment.obs.count} cells); loosen the filter.")
        var = experiment.ms[source.measurement].var.read().concat().to_pandas()
    column = source.gene_column or next((c for c in GENE_COLUMNS if c in var.columns), None)
    if column not in var.columns:
        raise ValueError(f"var has no gene column {column!r}; its columns are "
                         f"{[c for c in var.columns if c != 'soma_joinid']} (choose one with --gene_column).")
    return SomaCells(dataclasses.replace(source, gene_column=column), joinids,
                     var["soma_joinid"].to_numpy().astype(np.int64), var[column].astype(str).tolist())


def tile_rows(source: SomaSource) -> int:
    """Cells per tile of the X layer along the cell dimension (its schema's tile extent of `soma_dim_0`)."""
    with open_experiment(source) as experiment:
        options = experiment.ms[source.measurement].X[source.layer].schema_config_options()
    try:
        return max(1, int(json.loads(options.dims)["soma_dim_0"]["tile"]))
    except (AttributeError, KeyError, TypeError, ValueError):
        return DEFAULT_TILE_ROWS


def _counts_matrix(X, joinids: np.ndarray, var_joinids: np.ndarray, lookup: np.ndarray | None, reuse=None):
    """The sorted-CSR counts of the sorted, unique cells `joinids` over the genes `var_joinids`, from one read of
    the layer `X`, assembled by `coordinates.csr_from_coordinates` off the GIL (in `reuse`'s buffers if given)."""
    coords = (joinids,) if lookup is None else (joinids, var_joinids)
    return csr_from_coordinates(list(X.read(coords=coords).tables()), joinids, len(var_joinids), lookup, reuse)


def read_block(cells: SomaCells, joinids: np.ndarray, obs_columns=(), experiment=None, reuse: dict | None = None):
    """Raw counts of the cells `joinids`, in that order: a `(cells, genes)` CSR matrix over `cells.gene_names` and
    their `obs` columns (a DataFrame with `soma_joinid` first; `obs` is read only for `obs_columns`). With `reuse`
    (a dict kept by the caller's thread), the matrix lives in its buffers until the next read with it. One TileDB
    read, of the cells only when the measurement's genes are all wanted. (tiledbsoma-ml's `IOBatchIterable` runs a
    full `gc.collect()` per read, 0.16 s each beside torch, and its CSR builder compiles with numba in every
    process, about 6 s. Here a compiled kernel assembles the matrix, finding rows and columns without TileDB's
    re-indexers.)"""
    import pandas as pd

    if experiment is None:
        with open_experiment(cells.source) as opened:
            return read_block(cells, joinids, obs_columns, opened, reuse)
    # astype copies: after a spawn, unpickled arrays carry a dtype object that tiledbsoma's type check refuses
    joinids, var_joinids = np.asarray(joinids).astype("int64"), cells.var_joinids.astype("int64")
    unique, inverse = np.unique(joinids, return_inverse=True)
    if unique.size < joinids.size or not np.array_equal(unique, joinids):
        # each cell read once, in storage order, then put in the order asked (an endless stream's read can reach
        # into the next epoch and hold a cell twice, and TileDB refuses duplicate keys)
        matrix, obs = read_block(cells, unique, obs_columns, experiment)
        return matrix[inverse], obs.iloc[inverse].reset_index(drop=True)
    X = experiment.ms[cells.source.measurement].X[cells.source.layer]
    matrix = _counts_matrix(X, joinids, var_joinids, cells.gene_lookup, reuse)
    columns = [c for c in obs_columns if c != "soma_joinid"]
    if not columns:
        return matrix, pd.DataFrame({"soma_joinid": joinids})
    obs = (experiment.obs.read(coords=(joinids,), column_names=["soma_joinid", *columns]).concat().to_pandas()
           .set_index("soma_joinid").reindex(joinids).reset_index())
    return matrix, obs


def tokenize_block(cells: SomaCells, joinids, tokenizer, max_length: int | None, obs_columns=(), experiment=None,
                   reuse: dict | None = None):
    """The cells `joinids` tokenized as `data.encode_chunk` tokenizes `.h5ad` cells: a `pyarrow.Table` with the
    token columns, `soma_joinid` and the requested `obs` columns, in the order given. With `reuse` (a dict kept by
    the caller's thread), the read and the tokens live in its buffers: the table is valid until the next call."""
    import pyarrow as pa

    from .tokenize import encode_chunk

    matrix, obs = read_block(cells, joinids, obs_columns, experiment, reuse)
    columns, _ = encode_chunk(matrix, tokenizer, cells.gene_names, max_length, reuse=reuse)
    columns["soma_joinid"] = pa.array(obs["soma_joinid"].to_numpy().astype(np.int64))
    for column in obs_columns:
        if column != "soma_joinid":
            columns[column] = pa.array(obs[column].astype(str).tolist())
    return pa.table(columns)


def _distributed() -> tuple[int, int]:
    from tiledbsoma_ml._distributed import get_distributed_rank_and_world_size

    return get_distributed_rank_and_world_size()


def _worker() -> tuple[int, int]:
    from tiledbsoma_ml._distributed import get_worker_id_and_num

    return get_worker_id_and_num()


def default_block_size(cells: SomaCells, batch_size: int, num_workers: int = 0) -> int:
    """Cells per block: one tile of the X layer along the cells (a contiguous read of whole tiles), but small enough
    that a window (at most half of a shard's share of the cells) holds `BLOCKS_PER_READ` blocks, so that a batch
    mixes that many places of the experiment however small it is; in whole batches."""
    _, world_size = _distributed()
    share = len(cells) // (world_size * max(num_workers, 1))
    return max(1, min(tile_rows(cells.source), share // (2 * BLOCKS_PER_READ)) // batch_size) * batch_size


class SomaCellStream(torch.utils.data.IterableDataset):
    """Tokenized cells streamed from SOMA in seeded, block-shuffled order, sharded across processes and DataLoader
    workers (see the module's docstring). Iterating yields this process's cells, one dict each (`input_ids`,
    `expression_values`, `expression_bins`, `length`, `soma_joinid`, the `obs_columns`: the columns of a
    tokenized dataset, ids and bins in the smallest unsigned integer type that holds them, which the collators pad
    to int64); `units()` yields them a batch at a time, as training reads them. Endless unless `epochs`
    is given. `state_dict()`/`load_state_dict()` carry the position (units this process has consumed)."""

    def __init__(self, cells: SomaCells, tokenizer, *, batch_size: int = 16, seed: int = 0,
                 shuffle_chunk_size: int | None = None, io_batches: int | None = None,
                 max_length: int | None = DataConfig.max_length, obs_columns=(), epochs: int | None = None,
                 num_workers: int = 0):
        for name, value in (("batch_size", batch_size), ("shuffle_chunk_size", shuffle_chunk_size),
                            ("io_batches", io_batches)):
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be at least 1.")
        self.cells, self.tokenizer, self.batch_size, self.seed = cells, tokenizer, batch_size, seed
        self.max_length, self.obs_columns, self.epochs = max_length, tuple(obs_columns), epochs
        self.num_workers = num_workers
        self.shuffle_chunk_size = shuffle_chunk_size or default_block_size(cells, batch_size, num_workers)
        # BLOCKS_PER_READ blocks, at most half of a shard's units per epoch
        shards = _distributed()[1] * max(num_workers, 1)
        self.io_batches = io_batches or max(1, min(BLOCKS_PER_READ * self.units_per_block,
                                                   self.units_per_epoch // (2 * shards)))
        self.position = 0
        self._orders: dict[int, np.ndarray] = {}

    @property
    def units_per_epoch(self) -> int:
        return -(-len(self.cells) // self.batch_size)

    @property
    def units_per_block(self) -> int:
        """Units that go to one shard together (a block's worth, whole batches)."""
        return max(1, self.shuffle_chunk_size // self.batch_size)

    def global_unit(self, local: int, shard: int, shards: int) -> int:
        """Unit of the endless sequence that is local unit `local` of `shard` (of `shards`): whole groups of
        `units_per_block` units go to the shards in turn."""
        group, offset = divmod(local, self.units_per_block)
        return (group * shards + shard) * self.units_per_block + offset

    def state_dict(self, position: int | None = None) -> dict:
        """What a checkpoint records: the position, and what the sequence depends on (checked on resume)."""
        _, world_size = _distributed()
        return {"position": int(self.position if position is None else position), "order": ORDER_VERSION,
                "cells": len(self.cells),
                "cells_sha256": self.cells.fingerprint, "batch_size": self.batch_size, "seed": self.seed,
                "shuffle_chunk_size": self.shuffle_chunk_size, "io_batches": self.io_batches,
                "world_size": world_size, "num_workers": max(self.num_workers, 1)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a recorded position; refuses one recorded for another sequence (other cells, batch
        size, seed, number of processes or workers), which would repeat and skip cells."""
        current = self.state_dict()
        changed = [f"{key} {state.get(key)} -> {current[key]}" for key in STREAM_STATE_KEYS
                   if state.get(key) != current[key]]
        if state.get("order") != ORDER_VERSION:
            raise ValueError(f"the checkpoint's SOMA stream is of an earlier version of scgrn's order (order "
                             f"{state.get('order', 1)}, now {ORDER_VERSION}): the same position would be other cells; "
                             "finish that run with the scgrn it began with, or start a new one.")
        if changed:
            raise ValueError("the checkpoint's SOMA stream was another sequence (" + "; ".join(changed) + "); resume "
                             "with the same cells, batch size, seed, processes and DataLoader workers.")
        self.position = int(state["position"])

    def _order(self, epoch: int) -> np.ndarray:
        """The cells of `epoch`: blocks of `shuffle_chunk_size` consecutive joinids in a seeded order, a last
        partial block last (so that every other block starts a group of units: one contiguous read)."""
        if epoch not in self._orders:
            blocks = np.array_split(self.cells.joinids, range(self.shuffle_chunk_size, len(self.cells),
                                                              self.shuffle_chunk_size))
            full = len(self.cells) // self.shuffle_chunk_size
            rng = np.random.default_rng([self.seed, epoch])
            order = [*rng.permutation(full), *range(full, len(blocks))]
            self._orders = {epoch: np.concatenate([blocks[i] for i in order])}
        return self._orders[epoch]

    def unit_cells(self, unit: int) -> np.ndarray:
        """The joinids of unit `unit` of the endless sequence (before the shuffle within a read)."""
        epoch, index = divmod(unit, self.units_per_epoch)
        return self._order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]

    def _shard(self) -> tuple[int, int, int]:
        """(shard, shards, first local unit) of this process and worker."""
        rank, world_size = _distributed()
        worker, workers = _worker()
        # a DataLoader takes batches from its workers in turn, starting with worker 0: after `position` batches
        # the next one is due from the shard of worker `position % workers`, so the workers' shards rotate by that
        worker = (worker + self.position) % workers
        first = max(0, -(-(self.position - worker) // workers))  # this shard's units among those consumed
        return rank * workers + worker, world_size * workers, first

    def _window_units(self, window: int, shard: int, shards: int) -> list[int]:
        end = None if self.epochs is None else self.epochs * self.units_per_epoch
        first = window * self.io_batches
        return [u for u in (self.global_unit(local, shard, shards) for local in range(first, first + self.io_batches))
                if end is None or u < end]

    def units(self):
        """This process's (and worker's) batches of cells, from the current position on. `READ_THREADS` threads, an
        experiment handle each (TileDB, numpy's large copies and the compiled kernels release the GIL), read and
        tokenize the next window while this one is consumed (two windows held at most). Queuing the next window's
        reads before this one is complete was 2-5% faster at the default sizes, but with windows of one read (blocks
        of 64) it ran two scattered reads at once: 2.5 GB instead of 1.7 at 200,000 cells (benchmarks/README.md)."""
        shard, shards, local = self._shard()
        window = local // self.io_batches
        with _ReadPool(self.cells.source) as pool:
            def read(w):
                units = self._window_units(w, shard, shards)
                return self._submit_window(units, w, shard, shards, pool) if units else None

            current = read(window)
            while current is not None:
                batches = self._assemble(*current)
                current = read(window + 1)
                yield from batches[local - window * self.io_batches:]
                del batches  # not held while the next window is awaited
                window += 1
                local = window * self.io_batches

    def _submit_window(self, units: list[int], window: int, shard: int, shards: int, pool) -> tuple:
        """The window's reads queued on the pool's threads: its cells in storage order (contiguous joinids: whole
        tiles), `READ_CELLS` at a time, each read's Arrow table turned into rows on its thread and dropped there (a
        window is held once, not twice; the rows are copies, so the thread's buffers serve its next read). Returns
        what `_assemble` needs."""
        joinids, order, bounds = self._window_plan(units, window, shard, shards)
        reads = [pool.submit(lambda experiment, buffers, chunk: table_rows(tokenize_block(
            self.cells, chunk, self.tokenizer, self.max_length, self.obs_columns, experiment, buffers)),
            joinids[start:start + READ_CELLS]) for start in range(0, joinids.size, READ_CELLS)]
        return reads, order, bounds

    @staticmethod
    def _assemble(reads: list, order: np.ndarray, bounds: np.ndarray) -> list[list]:
        """A window's units as lists of cells: its reads awaited in order, the cells shuffled with the window's
        seeded permutation and cut into the units' sizes."""
        rows = [row for read in reads for row in read.result()]
        rows = [rows[i] for i in order]
        return [rows[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]

    def _window_plan(self, units: list[int], window: int, shard: int, shards: int):
        """A window's cells in storage order, the seeded permutation that shuffles them, and the units' bounds."""
        parts = [self.unit_cells(u) for u in units]
        joinids = np.sort(np.concatenate(parts))
        order = np.random.default_rng([self.seed, shards, shard, window]).permutation(joinids.size)
        return joinids, order, np.cumsum([0] + [len(p) for p in parts])

    def batch_joinids(self, n_batches: int, shard: int = 0, shards: int = 1) -> list[np.ndarray]:
        """The joinids of the first `n_batches` batches of `shard` (of `shards`), worked out without reading."""
        batches, window = [], 0
        while len(batches) < n_batches:
            units = self._window_units(window, shard, shards)
            if not units:
                break
            joinids, order, bounds = self._window_plan(units, window, shard, shards)
            shuffled = joinids[order]
            batches += [shuffled[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
            window += 1
        return batches[:n_batches]

    def __iter__(self):
        for unit in self.units():
            yield from unit

    def loader(self, collate_fn, num_workers: int | None = None):
        """A DataLoader of this stream's batches (`collate_fn` pads them); workers start by spawn, since TileDB's
        threads do not survive a fork."""
        workers = self.num_workers if num_workers is None else num_workers
        self.num_workers = workers
        # its own generator: starting an iterator then draws its base seed from it, not from the global RNG, so a
        # resumed run keeps the global random stream (masks, dropout) of the uninterrupted one
        return torch.utils.data.DataLoader(_Units(self), batch_size=None, collate_fn=collate_fn, num_workers=workers,
                                           multiprocessing_context="spawn" if workers else None,
                                           generator=torch.Generator().manual_seed(self.seed))


def shuffle_quality(stream: SomaCellStream, labels, *, n_batches: int = 500, seed: int = 0) -> dict:
    """How well the stream mixes a grouping of the cells (e.g. the source dataset): the mean number of distinct
    `labels` (indexed by soma_joinid) per batch in the stream's order (shard 0 of 1), against batches of the same
    sizes drawn uniformly at random from the same cells. Returns both means and their ratio."""
    labels = np.asarray(labels)
    batches = stream.batch_joinids(n_batches)
    rng = np.random.default_rng(seed)
    random = [rng.choice(stream.cells.joinids, size=len(b), replace=False) for b in batches]

    def mean_distinct(groups):
        return float(np.mean([np.unique(labels[g]).size for g in groups]))

    streamed, uniform = mean_distinct(batches), mean_distinct(random)
    return {"batches": len(batches), "distinct_per_batch": streamed, "random_order": uniform,
            "ratio": streamed / uniform}


class _ReadPool:
    """Threads that read and tokenize for one stream: `submit` queues one read on `READ_THREADS` threads, each with
    its own open experiment (SOMA handles are not shared between threads) and buffers that its reads reuse (page
    faults, fresh memory for every read, mostly TileDB's own, took about 40% of the stream's CPU; the buffers remove
    scgrn's share). A context manager: leaving it drops the reads not yet started and closes every handle."""

    def __init__(self, source: SomaSource):
        self.source = source

    def __enter__(self):
        import threading
        from concurrent.futures import ThreadPoolExecutor

        self._local, self._opened = threading.local(), []
        self._readers = ThreadPoolExecutor(READ_THREADS)
        return self

    def _experiment(self):
        if not hasattr(self._local, "experiment"):
            context = open_experiment(self.source)
            self._local.experiment = context.__enter__()
            self._opened.append(context)
        return self._local.experiment

    def submit(self, function, item):
        """A future of `function(experiment, buffers, item)`, run on a reading thread (`buffers`: its dict)."""
        return self._readers.submit(lambda: function(self._experiment(), self._local.__dict__.setdefault("buffers", {}),
                                                     item))

    def __exit__(self, *exc):
        self._readers.shutdown(wait=True, cancel_futures=True)
        for context in self._opened:
            context.__exit__(None, None, None)
        return False


class _Units(torch.utils.data.IterableDataset):
    def __init__(self, stream: SomaCellStream):
        self.stream = stream

    def __iter__(self):
        return self.stream.units()


def stream_soma(experiment_uri: str | os.PathLike, tokenizer, *, measurement: str = "RNA", obs_filter=None,
                layer: str = "raw", gene_column: str | None = None, tiledb_config: dict | None = None,
                **options) -> SomaCellStream:
    """Tokenized cells streamed from a SOMA experiment: the cells `obs_filter` matches, raw counts of `layer`,
    genes named by `gene_column` and matched to the tokenizer's vocabulary (genes it lacks are dropped and counted
    as from `.h5ad`). `options` go to [`SomaCellStream`] (`batch_size`, `seed`, `shuffle_chunk_size`,
    `io_batches`, `max_length`, `obs_columns`, `epochs`, `num_workers`)."""
    source = SomaSource(str(experiment_uri), measurement, layer, obs_filter, gene_column, tiledb_config)
    cells = query_cells(source)
    tokenizer.check_coverage(cells.gene_names)
    return SomaCellStream(cells, tokenizer, **options)


def write_experiment(uri: str | os.PathLike, datasets: dict, *, measurement: str = "RNA", layer: str = "raw") -> str:
    """A local SOMA experiment from several AnnData objects of raw counts (`{name: adata}`), appended one after
    the other with tiledbsoma's registration (genes joined by name); `obs` gains a `dataset` column naming each
    cell's source and every obs column becomes a string column present in all of them. Returns the URI."""
    tiledbsoma = _tiledbsoma()
    import tiledbsoma.io

    if Path(uri).exists():
        raise ValueError(f"{uri} exists; choose a new folder for the experiment.")
    prepared = []
    columns = sorted({c for adata in datasets.values() for c in adata.obs.columns} | {"dataset"})
    for name, adata in datasets.items():
        adata = adata.copy()
        adata.obs = adata.obs.reindex(columns=columns).astype(str).replace("nan", "")
        adata.obs["dataset"] = name
        adata.obs_names = [f"{name}:{cell}" for cell in adata.obs_names.astype(str)]
        adata.var_names = adata.var_names.astype(str)
        adata.var_names_make_unique()
        prepared.append(adata)
    uri = str(uri)
    tiledbsoma.io.from_anndata(uri, prepared[0], measurement_name=measurement, X_layer_name=layer,
                               ingest_mode="schema_only")
    registration = tiledbsoma.io.register_anndatas(uri, prepared, measurement_name=measurement,
                                                   obs_field_name="obs_id", var_field_name="var_id")
    registration.prepare_experiment(uri)
    for adata in prepared:
        tiledbsoma.io.from_anndata(uri, adata, measurement_name=measurement, X_layer_name=layer,
                                   registration_mapping=registration)
    return uri


SOURCE_FILE = "soma_source.json"


def sample_anndata(cells: SomaCells, n_cells: int, seed: int = 0, obs_columns=()):
    """An in-memory AnnData of `n_cells` cells drawn with `seed` from the query (raw counts, genes named by the
    gene column): what a gene panel or a quick look needs, without reading the whole experiment."""
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(cells.joinids, size=min(n_cells, len(cells)), replace=False))
    matrix, obs = read_block(cells, chosen, obs_columns)
    adata = anndata.AnnData(matrix.astype(np.float32), obs=obs.set_index(obs["soma_joinid"].astype(str)),
                            var=pd.DataFrame(index=pd.Index(cells.gene_names, dtype=str)))
    adata.var_names_make_unique()
    return adata


def soma_gene_panel(cells: SomaCells, network, data, *, sample_cells: int = 10_000) -> tuple[list, dict]:
    """The vocabulary's genes from the experiment: every named gene (`panel="all"`), or a prior-aware
    variable-gene panel (`"ranked"`, `"union"`, `"hvg"`: `networks.select_gene_panel`) chosen on `sample_cells`
    cells drawn with the data seed."""
    from ..grn.panel import select_gene_panel

    if data.panel == "all":
        genes = list(dict.fromkeys(g for g in cells.gene_names if g and g != "nan"))
        return genes, {"strategy": "all", "panel_genes": len(genes)}
    sample = sample_anndata(cells, sample_cells, data.seed)
    genes, report = select_gene_panel(sample, network, n_top_genes=data.n_top_genes, strategy=data.panel)
    return genes, {**report, "chosen_on_cells": sample.n_obs}


def _tokenized(cells: SomaCells, joinids, tokenizer, max_length, obs_columns):
    """A `datasets.Dataset` of the cells `joinids`, read and tokenized in blocks of 4,096."""
    import datasets
    import pyarrow as pa

    with open_experiment(cells.source) as experiment:
        tables = [tokenize_block(cells, joinids[start:start + 4096], tokenizer, max_length, obs_columns, experiment)
                  for start in range(0, len(joinids), 4096)]
    return datasets.Dataset(pa.concat_tables(tables))


def prepare_soma(source: SomaSource, network, output_dir, data=None, *, tokenizer=None, validation_cells: int = 1000,
                 sample_cells: int = 2000, obs_columns=(), overwrite: bool = False, **settings) -> dict:
    """A pretraining data folder for cells streamed from SOMA, as `data.prepare_cells` writes for `.h5ad` files,
    except that the training cells stay in the experiment: `tokenizer/` (the experiment's genes or a prior-aware
    panel, or the given tokenizer's), `prior/`, `prior_report.json` (with per-cell coverage), `dataset/` holding
    only `validation` (held-out cells, at most `validation_cells` and the data config's `validation_size`) and
    `train_sample` (`sample_cells` training cells, for the trivial baselines and coverage), and `soma_source.json`
    (the query, and a SHA-256 of its training cells, checked whenever the folder is used). `data` and `settings`
    are `DataConfig` fields."""
    from ..grn.coverage import LOW_COVERAGE, coverage_line, prior_coverage, prior_report
    from ..model.tokenization_scgrn import ScGrnTokenizer
    from ..storage.folders import atomic_folder, check_output_folder, jsonable
    from .config import DataConfig
    from .prepared import _given_tokenizer, save_dataset_atomically
    from .reading import check_raw_counts

    data = DataConfig.from_dict({**dataclasses.asdict(data or DataConfig()), **settings})
    if not data.normalize:
        raise ValueError("a SOMA layer is read as raw counts (the Census's 'raw'); normalize=False does not apply.")
    check_output_folder(output_dir, overwrite=overwrite, inputs=(source.uri,) if "://" not in source.uri else (),
                        replaced=True)
    cells = query_cells(source)
    check_raw_counts(read_block(cells, cells.joinids[:200])[0])
    validation, train = _hold_out(cells, data, validation_cells)
    given = _given_tokenizer(tokenizer, data)
    genes, panel_report = (soma_gene_panel(cells, network, data) if given is None else
                           (given.convert_ids_to_tokens(given.gene_vocab_ids.tolist()), {"strategy": "tokenizer"}))
    tokenizer = given or ScGrnTokenizer.from_genes(genes, n_bins=data.n_bins)
    tokenizer.check_coverage(cells.gene_names)
    edges = network.to_vocab_edges(tokenizer)
    rng = np.random.default_rng(data.seed)
    sample = np.sort(rng.choice(train.joinids, size=min(sample_cells, len(train)), replace=False))
    splits = {name: _tokenized(cells, ids, tokenizer, data.max_length, obs_columns)
              for name, ids in (("validation", validation.joinids), ("train_sample", sample))}
    report = prior_report(network, genes)
    report["per_cell"] = prior_coverage(splits["train_sample"]["input_ids"], edges, len(tokenizer),
                                        tokenizer.all_special_ids)
    (logger.warning if report["per_cell"]["mean_share_of_tokens_with_partner"] < LOW_COVERAGE else logger.info)(
        coverage_line(report["per_cell"]))
    metadata = {"sources": [{"name": f"SOMA experiment {source.display_name()}", "obs_filter": source.obs_filter}],
                "cells": len(cells), "data_config": dataclasses.asdict(data), "panel": panel_report,
                "split": {"seed": data.seed, "train": len(train), "validation": len(validation), "test": 0,
                          "train_sample": len(sample)}}
    described = {"source": cells.source.to_dict(), "train_cells": len(train), "train_cells_sha256": train.fingerprint,
                 "validation_joinids": validation.joinids.tolist(), "max_length": data.max_length,
                 "obs_columns": list(obs_columns)}
    import datasets

    with atomic_folder(output_dir) as folder:
        save_dataset_atomically(datasets.DatasetDict(splits), folder / "dataset", metadata)
        tokenizer.save_pretrained(folder / "tokenizer")
        network.restrict(genes).save(folder / "prior")
        (folder / "prior_report.json").write_text(json.dumps({"prior": report, **metadata}, indent=2,
                                                             default=jsonable))
        (folder / SOURCE_FILE).write_text(json.dumps(described, indent=2))
    return {"prior": report, **metadata}


def _hold_out(cells: SomaCells, data, validation_cells: int) -> tuple[SomaCells, SomaCells]:
    """Validation cells drawn with the data seed (at most `validation_cells`, and `validation_size` of the
    cells), and the training cells (the rest)."""
    size = max(1, min(validation_cells, int(round(data.validation_size * len(cells)))))
    if size >= len(cells):
        raise ValueError(f"the query matches {len(cells)} cells: too few to hold out validation cells and train.")
    chosen = np.random.default_rng(data.seed).choice(cells.joinids, size=size, replace=False)
    return cells.subset(chosen), cells.subset(np.setdiff1d(cells.joinids, chosen))


def training_cells(data_dir) -> tuple[SomaCells, dict]:
    """The training cells of a folder `prepare_soma` wrote, queried again and checked against the SHA-256 it
    recorded (an experiment that gained or lost matching cells since is refused), and the folder's description."""
    described = json.loads((Path(data_dir) / SOURCE_FILE).read_text())
    cells = query_cells(SomaSource(**described["source"]))
    train = cells.subset(np.setdiff1d(cells.joinids, np.asarray(described["validation_joinids"], dtype=np.int64)))
    if train.fingerprint != described["train_cells_sha256"]:
        raise ValueError(f"the SOMA query now matches other training cells ({len(train)}) than when {data_dir} was "
                         f"written ({described['train_cells']}); the experiment changed: write a new data folder.")
    return train, described


def census_source(release: str, *, organism: str = "homo_sapiens", obs_filter: str | None = "is_primary_data == True",
                  gene_column: str = "feature_name") -> SomaSource:
    """The hosted CELLxGENE Census (`release`, e.g. "2025-01-30" or "stable") as a source: its `organism`
    experiment, raw counts, primary cells only by default, genes by symbol. Needs network and `pip install
    'scgrn[census]'`; documented, not tested offline."""
    try:
        import cellxgene_census
    except ImportError as error:
        raise ImportError("--census needs the census extra: pip install 'scgrn[census]'") from error
    with cellxgene_census.open_soma(census_version=release) as census:
        experiment = census["census_data"][organism]
        # the region and anonymous access only: credentials and local paths never go into the data folder
        config = {k: v for k, v in census.context.tiledb_config.items()
                  if k in ("vfs.s3.region", "vfs.s3.no_sign_request")}
        return SomaSource(experiment.uri, "RNA", "raw", obs_filter, gene_column, config)
