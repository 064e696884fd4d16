"""The CPU benchmarks' own command lines, run at a tiny size so that a renamed option cannot break them unseen (a
rename of `--h5ad` to `--input` once left `train_step.py` failing before its first row)."""

import subprocess
import sys
from pathlib import Path

from conftest import CELLTYPIST_SAMPLE, OMNIPATH_TABLE, shared_data_or_skip

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *options: str) -> str:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *options], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_step_prints_a_row_per_variant():
    shared_data_or_skip(CELLTYPIST_SAMPLE), shared_data_or_skip(OMNIPATH_TABLE)
    out = _run("train_step.py", "--lengths", "64", "--variants", "scgrn_grn_structured", "scgrn_dense",
               "--tokens_per_batch", "128", "--hidden", "16", "--layers", "1", "--heads", "2", "--intermediate", "32",
               "--repeats", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 64 |")]
    assert [row[2].strip() for row in rows] == ["scgrn_grn_structured", "scgrn_dense"]
    assert rows[1][5].strip() == "1.00x" and float(rows[0][3]) > 0  # dense is the ratio's base; a step was timed


def test_attention_prints_its_row():
    shared_data_or_skip(CELLTYPIST_SAMPLE), shared_data_or_skip(OMNIPATH_TABLE)
    out = _run("attention.py", "--lengths", "64", "--variants", "grn_structured", "--cells", "2", "--heads", "2",
               "--head_dim", "8", "--repeats", "1")
    row = next(line.split("|") for line in out.splitlines() if line.startswith("| 64 | grn_structured |"))
    assert float(row[3]) > 0, out  # milliseconds per forward + backward


def test_edges_speed_prints_every_method_and_the_gradient_ratio():
    shared_data_or_skip(CELLTYPIST_SAMPLE), shared_data_or_skip(OMNIPATH_TABLE)
    out = _run("edges_speed.py", "--n_cells", "6", "--n_genes", "200", "--hidden", "16", "--layers", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(row[1].strip(), row[2].strip()) for row in rows] == [
        ("attention", "grn_auto"), ("perturbation", "grn_auto"), ("gradient", "grn_auto"), ("gradient", "eager")]
    assert all(float(row[3]) >= 0 and int(row[4].replace(",", "")) > 0 for row in rows), out
    assert "gradient: structured kernel" in out and "machine: " in out


def test_edges_speed_refuses_a_missing_file_in_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "edges_speed.py"), "--cells", "nope.h5ad"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["error: nope.h5ad does not exist (give an .h5ad file or "
                                                  "'pbmc68k_reduced')."]


def test_bag_of_genes_prints_a_row_per_learning_rate_beside_pca():
    out = _run("bag_of_genes.py", "--input", "pbmc68k_reduced", "--label_column", "louvain", "--steps", "3", "5",
               "--learning_rates", "0.01", "0.03")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| 0.0")]
    assert [row[1].strip() for row in rows] == ["0.01", "0.03"]
    assert all(0 < float(cell) <= 1 for row in rows for cell in row[2:5]), out
    assert rows[0][2] == rows[1][2]  # the same random start, read the same way
    assert "50 principal components of the log-normalised counts read the same way: 0.857" in out


def test_encoder_parts_prints_a_row_per_arm_beside_pca():
    arms = ["no blocks", "2 blocks, embedding LayerNorm + masked values"]
    out = _run("encoder_parts.py", "--input", "pbmc68k_reduced", "--label_column", "louvain", "--steps", "2", "4",
               "--arms", *arms)
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in out.splitlines()
            if line.startswith(("| no blocks", "| 2 blocks"))]
    assert [row[0] for row in rows] == arms, out
    assert all(0 < float(cell) <= 1 for row in rows for cell in row[1:4]), out  # probe accuracies
    assert all(0 < float(row[4]) < 1 for row in rows), out  # the running detection loss
    assert "50 principal components of the log-normalised counts read the same way: 0.857" in out


def test_encoder_parts_refuses_an_unknown_arm_in_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "encoder_parts.py"), "--input",
                             "pbmc68k_reduced", "--label_column", "louvain", "--arms", "3 blocks"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --arms ['3 blocks']: not an arm")


def test_bag_of_genes_refuses_a_missing_label_column_in_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bag_of_genes.py"), "--input",
                             "pbmc68k_reduced", "--label_column", "nope"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the cells have no label column ['nope']")
