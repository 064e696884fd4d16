"""Shared fixtures: tiny configs, a hand-made vocabulary and prior, and the real data in ../shared/data."""

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from modeling_scgrn import ScGrnConfig, ScGrnTokenizer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
OMNIPATH_TABLE = SHARED_DATA / "omnipath_interactions.parquet"
CELLTYPIST_SAMPLE = SHARED_DATA / "celltypist_sample_counts.h5ad"

GENES = [f"G{i}" for i in range(12)]
# regulator -> target, by gene name: G0 regulates G1 and G2, G1 regulates G3, G4 regulates G0, G5 regulates G6.
EDGES = [("G0", "G1"), ("G0", "G2"), ("G1", "G3"), ("G4", "G0"), ("G5", "G6")]


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture
def tokenizer():
    return ScGrnTokenizer.from_genes(GENES, n_bins=5)


@pytest.fixture
def edge_tensor(tokenizer):
    ids = tokenizer.convert_tokens_to_ids
    return torch.tensor([[ids(s) for s, _ in EDGES], [ids(t) for _, t in EDGES]])


def tiny_config(tokenizer, **overrides) -> ScGrnConfig:
    options = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        n_bins=5,
        hidden_dropout_prob=0.0,
        classifier_dropout=0.0,
        num_labels=3,
    )
    options.update(overrides)
    return ScGrnConfig(**options)


@pytest.fixture
def counts():
    """Three cells x 12 genes of raw counts; cell 2 has fewer genes, so batches carry padding."""
    rng = np.random.default_rng(0)
    dense = rng.integers(1, 20, size=(3, 12)).astype(np.float32)
    dense[2, 6:] = 0
    return sp.csr_matrix(dense)


@pytest.fixture
def batch(tokenizer, counts):
    return tokenizer(counts, gene_names=GENES)


def shared_data_or_skip(path: Path) -> Path:
    """The path of a file in ../shared/data; skips outside CI when it is absent, fails in CI (CI=true) so a
    misplaced checkout can never pass by skipping."""
    if not path.exists():
        message = f"{path} is not available (tests read ../shared/data beside the checkout)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def load_script(path: Path, name: str):
    """A script of the repository (`benchmarks/`, `data/`, `pretrain/`, `finetune/`) imported by path as module
    `name`, so that a test calls its `main` in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torchrun(arguments: list, port: int, cwd=None, timeout: int = 600):
    """`torchrun --nproc_per_node 2` (gloo, CPU, one thread a process) of a script and its arguments."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), *map(str, arguments)], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


@pytest.fixture(scope="session")
def collectri_prior():
    """The real CollecTRI network (OmniPath's table in ../shared/data), read once for the session; its warnings
    (self edges, merged duplicates) are the reader's own tests' business."""
    import warnings

    from modeling_scgrn.grn.network import GeneRegulatoryNetwork

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GeneRegulatoryNetwork.read(shared_data_or_skip(OMNIPATH_TABLE), "collectri")
