"""Tokenization throughput and memory at atlas scale: the real 559-cell x 32,786-gene celltypist sample replicated
to 50,000 and 200,000 cells (written once as .h5ad files, read back in backed mode), tokenized with all detected
genes per cell by `tokenize_anndata` with 1 process (2 threads: I/O overlaps encoding) and 2 processes, next to the simplest correct per-cell Python loop,
measured in the same run. Each measurement runs in its own process, so its peak resident memory is its own.

    python benchmarks/tokenize_cells.py [--sizes 50000 200000] [--workdir /tmp/scgrn-tokenize-bench]

Needs about 4 GB of disk per 100,000 cells (input file plus the Arrow chunks while they are mapped). Before each
measurement pending writes are flushed and the input file is read once, so it comes from the page cache: the figures
are tokenization, not the disk (a cold read of the 200,000-cell file from this VM's disk runs at about 90 MB/s).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from real_cells import default_paths, peak_rss_mib, run_isolated


def make_file(source: Path, cells: int, folder: Path) -> Path:
    import anndata as ad
    import scipy.sparse as sp

    path = folder / f"celltypist_x{cells}.h5ad"
    if path.exists():
        return path
    sample = ad.read_h5ad(source)
    copies = -(-cells // sample.n_obs)
    matrix = sp.vstack([sample.X.tocsr()] * copies, format="csr")[:cells]
    adata = ad.AnnData(matrix, var=sample.var)
    adata.obs_names = [f"c{i}" for i in range(cells)]
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    adata.write_h5ad(partial)
    partial.rename(path)
    return path


def read_through(path: Path, block: int = 64 << 20) -> None:
    """Read a file once, so that the measurement after it finds it in the page cache."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(block):
            pass


def per_cell_loop(adata, vocab: dict, n_bins: int, cells: int) -> float:
    """The simplest correct tokenizer: one Python loop per cell (same tokens, values and bins as the library)."""
    names = list(adata.var_names)
    start = time.perf_counter()
    for row in range(cells):
        counts = adata.X[row]
        total = counts.sum()
        entries = [(int(c), vocab[names[j]]) for j, c in zip(counts.indices, counts.data) if c > 0 and names[j] in vocab]
        entries.sort(key=lambda e: (-e[0], e[1]))
        ids = [0] + [token for _, token in entries]
        values = [0.0] + [float(np.log1p(c / total * 1e4)) for c, _ in entries]
        bins, best = [0], 0
        for rank, (c, _) in enumerate(entries):
            if rank and c != entries[rank - 1][0]:
                best = rank
            bins.append(n_bins - best * n_bins // len(entries))
        assert len(ids) == len(values) == len(bins)
    return cells / (time.perf_counter() - start)


def one(path: Path, num_proc: int, chunk_size: int) -> dict:
    from modeling_scgrn import ScGrnTokenizer
    from modeling_scgrn.cells.reading import read_cells
    from modeling_scgrn.cells.tokenize import tokenize_anndata

    adata = read_cells(str(path), backed=True)
    tokenizer = ScGrnTokenizer.from_genes(list(adata.var_names), n_bins=51)
    before = peak_rss_mib()
    start = time.perf_counter()
    dataset, report = tokenize_anndata(adata, tokenizer, max_length=None, num_proc=num_proc, chunk_size=chunk_size,
                                       show_progress=False)
    elapsed = time.perf_counter() - start
    return {"cells": len(dataset), "num_proc": num_proc, "seconds": elapsed, "cells_per_s": len(dataset) / elapsed,
            "mean_genes_per_cell": report["mean_genes_per_cell"], "peak_rss_mib": peak_rss_mib(),
            "rss_before_mib": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h5ad, _ = default_paths()
    parser.add_argument("--input", default=str(h5ad))
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--num_proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunk_size", type=int, default=10_000)
    parser.add_argument("--loop_cells", type=int, default=2_000, help="cells timed for the per-cell loop")
    parser.add_argument("--workdir", default="/tmp/scgrn-tokenize-bench")
    parser.add_argument("--one", nargs=2, metavar=("FILE", "NUM_PROC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(Path(args.one[0]), int(args.one[1]), args.chunk_size)))
        return
    import anndata as ad

    from modeling_scgrn import ScGrnTokenizer

    files = {size: make_file(Path(args.input), size, Path(args.workdir)) for size in args.sizes}
    import gc

    gc.collect()
    sample = ad.read_h5ad(args.input)
    vocab = ScGrnTokenizer.from_genes(list(sample.var_names), n_bins=51).get_vocab()
    loop = per_cell_loop(sample, vocab, 51, min(args.loop_cells, sample.n_obs))
    print(f"chunks of {args.chunk_size} cells, all detected genes per cell, backed .h5ad input")
    print("| cells | processes | cells/s | cells/s per process | vs per-cell loop | genes/cell | peak RSS MiB "
          "(+ over start) |\n|---|---|---|---|---|---|---|")
    for size, path in files.items():
        for num_proc in args.num_proc:
            os.sync()  # each measurement starts with no pending writes of the previous one (they throttle I/O)
            read_through(path)  # and with its input in the page cache: the figures are tokenization, not the disk
            r = run_isolated(Path(__file__), ["--one", str(path), str(num_proc), "--chunk_size", str(args.chunk_size)],
                             timeout=3600)
            if "error" in r:
                print(f"| {size} | {num_proc} | {r['error']} | | | | |")
                continue
            print(f"| {r['cells']} | {num_proc} | {r['cells_per_s']:.0f} | {r['cells_per_s'] / num_proc:.0f} | "
                  f"{r['cells_per_s'] / loop:.0f}x | {r['mean_genes_per_cell']:.0f} | {r['peak_rss_mib']:.0f} "
                  f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f}) |")
    print(f"per-cell Python loop: {loop:.0f} cells/s (1 process, {min(args.loop_cells, sample.n_obs)} cells)")


if __name__ == "__main__":
    main()
