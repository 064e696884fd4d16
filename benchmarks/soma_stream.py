"""Cells per second into pretraining from TileDB-SOMA, from `.h5ad` and from tokenized Arrow shards, with 1 and 2
processes (and, for SOMA, 0 and 2 DataLoader workers), each reader's peak memory as the corpus grows, and how well the
SOMA stream mixes the datasets an experiment is built from.

    python benchmarks/soma_stream.py --cells 20000 200000 --output runs/soma_bench

The corpus is the celltypist sample (559 real cells x 32,786 genes, raw counts) replicated to each size, written
once as `.h5ad`, as a SOMA experiment (tiledbsoma.io.from_h5ad) and as tokenized Arrow shards (the cells tokenized
ahead, as data/tokenize_cells.py writes them). Every reader yields the same tokenized cells (1,024 tokens at most,
the whole vocabulary):
- soma: `SomaCellStream` with its defaults (blocks sized from the layer's tiling, whole blocks to each process and
  worker, windows of 16 blocks read on threads one window ahead), batches of 64; with `--workers 2` through its
  DataLoader (spawned workers, each its own shard);
- soma, old settings: the same stream with the earlier defaults' sizes (blocks of 64 cells, 16 batches per read);
- h5ad: the file opened backed, chunks of 1,024 rows tokenized as they are read, every second chunk per process;
- arrow: the tokenized dataset memory-mapped, `Dataset.shard(processes, rank)` read in batches of 1,024.
Each reader runs in fresh processes (started together for 2), so peak memory (VmHWM) is its own; cells/s
counts every process's cells over the wall time of the slowest. Writing the corpora is timed too.

Shuffle quality: the corpus is read as an atlas of 10 datasets appended one after another (10 contiguous ranges of
joinids); for each block size, the mean number of distinct datasets per batch of 64 in the stream's order (500
batches, default window) against batches drawn uniformly at random (`soma.shuffle_quality`).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "celltypist_sample_counts.h5ad"
BLOCK = 1024
READERS = {"soma": "soma", "soma_old": "soma, old settings", "h5ad": "h5ad", "arrow": "arrow"}
RUNS = [("soma", 0), ("soma", 2), ("soma_old", 0), ("h5ad", 0), ("arrow", 0)]  # (reader, DataLoader workers)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 200_000], help="corpus sizes")
    parser.add_argument("--output", required=True, help="folder for the corpora and results.json")
    parser.add_argument("--sample", default=str(SAMPLE), help="the .h5ad of raw counts to replicate")
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--read", nargs=5, metavar=("READER", "FOLDER", "RANK", "WORLD", "WORKERS"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def write_corpora(sample_path: str, n_cells: int, folder: Path, max_length: int) -> dict:
    import anndata
    import numpy as np
    import scipy.sparse as sp
    import tiledbsoma.io

    from modeling_scgrn import ScGrnTokenizer
    from modeling_scgrn.cells.prepared import save_dataset_atomically
    from modeling_scgrn.cells.tokenize import tokenize_anndata

    folder.mkdir(parents=True, exist_ok=True)
    sample = anndata.read_h5ad(sample_path)
    copies = -(-n_cells // sample.n_obs)
    matrix = sp.vstack([sample.X] * copies, format="csr")[:n_cells]
    adata = anndata.AnnData(matrix, var=sample.var.copy())
    adata.obs_names = [f"cell{i}" for i in range(n_cells)]
    timings = {}
    start = time.perf_counter()
    adata.write_h5ad(folder / "cells.h5ad")
    timings["write_h5ad_s"] = time.perf_counter() - start
    start = time.perf_counter()
    tiledbsoma.io.from_h5ad(str(folder / "experiment"), str(folder / "cells.h5ad"), measurement_name="RNA",
                            X_layer_name="raw")
    timings["write_soma_s"] = time.perf_counter() - start
    tokenizer = ScGrnTokenizer.from_genes(list(adata.var_names), n_bins=51)
    tokenizer.save_pretrained(folder / "tokenizer")
    start = time.perf_counter()
    dataset, _ = tokenize_anndata(adata, tokenizer, max_length=max_length, show_progress=False)
    save_dataset_atomically(dataset, folder / "arrow")
    timings["tokenize_to_arrow_s"] = time.perf_counter() - start
    del adata, matrix, dataset
    timings["bytes"] = {name: sum(f.stat().st_size for f in (folder / name).rglob("*") if f.is_file())
                        for name in ("experiment", "arrow")}
    timings["bytes"]["h5ad"] = (folder / "cells.h5ad").stat().st_size
    (folder / "max_length").write_text(str(max_length))
    return {"cells": n_cells, "nnz_per_cell": float(np.diff(sample.X.indptr).mean()), **timings}


def read(reader: str, folder: Path, rank: int, world: int, workers: int = 0) -> dict:
    """Every cell of this process's share, tokenized; returns cells, seconds and peak memory."""
    from modeling_scgrn import ScGrnTokenizer

    tokenizer = ScGrnTokenizer.from_pretrained(folder / "tokenizer")
    max_length = int((folder / "max_length").read_text())
    start, cells = time.perf_counter(), 0
    if reader.startswith("soma"):
        from modeling_scgrn.cells.soma import SomaCellStream, SomaSource, query_cells

        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
        sizes = {"shuffle_chunk_size": 64, "io_batches": BLOCK // 64} if reader == "soma_old" else {}
        stream = SomaCellStream(query_cells(SomaSource(str(folder / "experiment"))), tokenizer, batch_size=64,
                                epochs=1, max_length=max_length, num_workers=workers, **sizes)
        cells = sum(stream.loader(len)) if workers else sum(len(unit) for unit in stream.units())
    elif reader == "h5ad":
        import anndata

        from modeling_scgrn.cells.tokenize import encode_chunk

        adata = anndata.read_h5ad(folder / "cells.h5ad", backed="r")
        genes = list(adata.var_names)
        for chunk_start in range(rank * BLOCK, adata.n_obs, world * BLOCK):
            columns, _ = encode_chunk(adata.X[chunk_start:chunk_start + BLOCK], tokenizer, genes, max_length)
            cells += len(columns["length"])
    else:
        import datasets

        dataset = datasets.load_from_disk(str(folder / "arrow")).shard(world, rank, contiguous=True)
        for batch in dataset.with_format("numpy").iter(batch_size=BLOCK):
            cells += len(batch["length"])
    seconds = time.perf_counter() - start
    return {"cells": cells, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark (VmHWM; ru_maxrss would carry the parent's from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(reader: str, folder: Path, world: int, workers: int = 0) -> dict:
    processes = [subprocess.Popen([sys.executable, __file__, "--output", "-", "--read", reader, str(folder), str(rank),
                                   str(world), str(workers)], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"}) for rank in range(world)]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"{reader} reader failed ({process.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    cells = sum(r["cells"] for r in results)
    seconds = max(r["seconds"] for r in results)
    return {"reader": READERS[reader], "processes": world, "workers": workers, "cells": cells,
            "seconds": round(seconds, 2), "cells_per_s": round(cells / seconds),
            "peak_rss_mib_per_process": round(max(r["peak_rss_mib"] for r in results))}


def markdown(corpora: list, rows: list) -> str:
    import tiledbsoma

    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
             f"tiledbsoma {tiledbsoma.__version__}.", "",
             "| corpus cells | reader | processes | DataLoader workers | cells/s | seconds "
             "| peak RSS per process (MiB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row['corpus_cells']:,} | {row['reader']} | {row['processes']} | {row['workers']} "
                     f"| {row['cells_per_s']:,} | {row['seconds']} | {row['peak_rss_mib_per_process']:,} |")
    lines += ["", "| corpus cells | write .h5ad (s) | write SOMA (s) | tokenize to Arrow (s) | .h5ad MB | SOMA MB | Arrow MB |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in corpora:
        b = c["bytes"]
        lines.append(f"| {c['cells']:,} | {c['write_h5ad_s']:.0f} | {c['write_soma_s']:.0f} | "
                     f"{c['tokenize_to_arrow_s']:.0f} | {b['h5ad'] / 1e6:,.0f} | {b['experiment'] / 1e6:,.0f} | "
                     f"{b['arrow'] / 1e6:,.0f} |")
    lines += ["", "| corpus cells | block size (cells) | batches per read | distinct datasets per batch | random order "
              "| ratio |", "| --- | --- | --- | --- | --- | --- |"]
    for c in corpora:
        for q in c.get("shuffle", []):
            lines.append(f"| {c['cells']:,} | {q['block']}{' (default)' if q['default'] else ''} | {q['io_batches']} | "
                         f"{q['distinct_per_batch']:.2f} | {q['random_order']:.2f} | {q['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def shuffle_table(folder: Path, n_datasets: int = 10) -> list:
    """Shuffle quality of the SOMA stream for several block sizes (the corpus read as `n_datasets` datasets)."""
    import numpy as np

    from modeling_scgrn import ScGrnTokenizer
    from modeling_scgrn.cells.soma import SomaCellStream, SomaSource, query_cells, shuffle_quality

    cells = query_cells(SomaSource(str(folder / "experiment")))
    tokenizer = ScGrnTokenizer.from_pretrained(folder / "tokenizer")
    labels = np.arange(len(cells)) * n_datasets // len(cells)
    rows = []
    for block in (None, 64, 256, 1024, 2048):
        stream = SomaCellStream(cells, tokenizer, batch_size=64, shuffle_chunk_size=block)
        rows.append({"block": stream.shuffle_chunk_size, "default": block is None, "io_batches": stream.io_batches,
                     **shuffle_quality(stream, labels)})
    return rows


def main(argv=None):
    args = parse_arguments(argv)
    if args.read:
        reader, folder, rank, world, workers = args.read
        print(json.dumps(read(reader, Path(folder), int(rank), int(world), int(workers))))
        return
    output = Path(args.output)
    corpora, rows = [], []
    for n_cells in args.cells:
        folder = output / f"cells_{n_cells}"
        corpora.append(write_corpora(args.sample, n_cells, folder, args.max_length))
        corpora[-1]["shuffle"] = shuffle_table(folder)
        print(json.dumps(corpora[-1]), flush=True)
        for reader, workers in RUNS:
            for world in (1, 2):
                rows.append({"corpus_cells": n_cells, **measure(reader, folder, world, workers)})
                print(json.dumps(rows[-1]), flush=True)
    table = markdown(corpora, rows)
    (output / "results.json").write_text(json.dumps({"corpora": corpora, "reads": rows}, indent=2))
    (output / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
