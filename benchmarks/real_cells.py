"""Shared by the attention and training-step benchmarks: real cells of a chosen length with the real prior, and a
runner that measures each variant in its own process (so peak memory is that variant's alone).

Cells of L genes are real genes of real cells: the celltypist sample's cells (~1,800 detected genes each) ranked by
expression, joined cell after cell (a gene already present is skipped) until L - 1 genes follow `[CLS]`, so cells
longer than one cell's detected genes are "padded from several cells".
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def default_paths() -> tuple[Path, Path]:
    return SHARED / "celltypist_sample_counts.h5ad", SHARED / "omnipath_interactions.parquet"


def load_real_cells(h5ad: Path, prior: Path, length: int, num_cells: int, seed: int = 0):
    """`(tokenizer, batch, edges, network)`: `num_cells` cells of exactly `length` tokens (CLS included), binned
    and continuous values, and the CollecTRI edges among the tokenizer's vocabulary."""
    import anndata as ad

    from modeling_scgrn import ScGrnTokenizer
    from modeling_scgrn.grn.network import GeneRegulatoryNetwork

    adata = ad.read_h5ad(h5ad)
    network = GeneRegulatoryNetwork.read(prior)
    tokenizer = ScGrnTokenizer.from_genes(list(adata.var_names), n_bins=51)
    encoded = tokenizer(adata, return_tensors="np")
    lengths = encoded["attention_mask"].sum(1)
    detected = np.unique(np.concatenate([encoded["input_ids"][c][1:n] for c, n in enumerate(lengths)]))
    if length - 1 > detected.size:
        raise ValueError(f"{h5ad.name} detects {detected.size:,} distinct genes in all; a cell of {length:,} tokens "
                         f"needs {length - 1:,}. Use a shorter length or a larger sample (--input).")
    rng = np.random.default_rng(seed)
    order = rng.permutation(adata.n_obs)
    columns = {"input_ids": [], "expression_values": [], "expression_bins": []}
    cursor = 0
    for _ in range(num_cells):
        ids, values, bins, seen = [tokenizer.cls_token_id], [0.0], [0], set()
        while len(ids) < length:
            cell = int(order[cursor % len(order)])
            cursor += 1
            end = int(lengths[cell])
            for gene, value, level in zip(encoded["input_ids"][cell][1:end].tolist(),
                                          encoded["expression_values"][cell][1:end].tolist(),
                                          encoded["expression_bins"][cell][1:end].tolist()):
                if gene not in seen and len(ids) < length:
                    seen.add(gene)
                    ids.append(gene)
                    values.append(value)
                    bins.append(level)
        columns["input_ids"].append(ids)
        columns["expression_values"].append(values)
        columns["expression_bins"].append(bins)
    batch = {
        "input_ids": torch.tensor(columns["input_ids"]),
        "expression_values": torch.tensor(columns["expression_values"], dtype=torch.float32),
        "expression_bins": torch.tensor(columns["expression_bins"]),
        "attention_mask": torch.ones(num_cells, length, dtype=torch.long),
    }
    edges = torch.as_tensor(network.to_vocab_edges(tokenizer))
    return tokenizer, batch, edges, network


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB: VmHWM from /proc on Linux (getrusage's ru_maxrss would
    carry over the peak of the parent that spawned us), ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale / (1024 if scale == 1 else 1)


def run_isolated(script: Path, options: list[str], timeout: float) -> dict:
    """Run `script --one ...` in a fresh process and return the JSON line it prints last (or an error entry)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        done = subprocess.run([sys.executable, str(script), *options], capture_output=True, text=True,
                              timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0][:200]}"}
    return json.loads(lines[-1])


def best_seconds(run, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of `run()`, after one untimed warm-up call (compilation, caches)."""
    import time

    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_flops(size: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """A plain matrix-multiply peak of this machine and thread count, FLOP/s (best of `repeats`)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / best_seconds(lambda: a @ b, repeats)
