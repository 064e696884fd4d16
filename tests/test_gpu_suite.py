"""The GPU suite's CPU dry run (`benchmarks/gpu_suite.py --device cpu --quick`), so the suite that waits for a GPU
never rots; and its long cells beyond the sample's distinct genes."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import CELLTYPIST_SAMPLE, OMNIPATH_TABLE, shared_data_or_skip

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_dry_run_checks_every_kernel_and_writes_its_tables(tmp_path):
    shared_data_or_skip(CELLTYPIST_SAMPLE)
    # one length (of --quick's two) keeps the suite's time down; every section and kernel still runs
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu",
                             "--quick", "--lengths", "128", "--output_dir", str(tmp_path)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    rows = {(r["implementation"], r["dtype"]): r for r in report["correctness"]}
    assert set(rows) == {(i, d) for i in ("eager", "sdpa", "grn_structured", "flex_attention") for d in ("fp32", "bf16")}
    for implementation in ("sdpa", "grn_structured", "flex_attention"):
        assert rows[(implementation, "fp32")]["output_max_abs_diff"] < 1e-4, implementation
    assert rows[("grn_structured", "fp32")]["grad_max_abs_diff"] < 1e-4
    assert rows[("flex_attention", "fp32")]["grad_max_abs_diff"] is None  # no flex backward on CPU
    assert [d["deterministic_algorithms"] for d in report["determinism"]] == [False, True]
    assert all(d["bitwise_identical"] and d["implementation"] == "grn_auto (grn_structured)"
               for d in report["determinism"])
    costs = {(r["kernel"], r["length"]): r for r in report["mask_cost"]}
    assert set(costs) == {(k, 128) for k in ("grn_structured", "flex_attention")}  # one length keeps it short
    for length in (128,):  # the structured plan scores fewer pairs than flex's blocks hold
        structured, flex = costs[("grn_structured", length)], costs[("flex_attention", length)]
        assert 0 < structured["scored_share"] < flex["scored_share"] <= 1 and structured["build_s"] > 0
    # on CPU flex has no backward, so the fastest exact kernel for training is the structured one: the default here
    assert report["default_choice"] == {"default": "grn_structured", "default_is_fastest": True,
                                        "fastest_training_kernel": {"128": "grn_structured"}}
    assert {(r["variant"], r["length"]) for r in report["speed"]} == {
        (v, 128) for v in ("scgrn_grn_structured", "scgrn_grn_flex", "scgrn_dense", "bert")}
    assert all("error" not in r and r["embed_cells_per_s"] > 0 for r in report["speed"])
    assert report["accelerate"]["exit_status"] == 0 and report["accelerate"]["validation_loss"] > 0
    table = (tmp_path / "gpu_suite.md").read_text()
    assert "| grn_structured | fp32 |" in table and "Default attention here (`grn_auto`): grn_structured" in table


def test_cells_longer_than_the_sample_come_from_the_vocabulary(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_suite import cells

    tokenizer, batch, edges, source = cells(shared_data_or_skip(CELLTYPIST_SAMPLE), shared_data_or_skip(OMNIPATH_TABLE),
                                            12_000, 2)
    assert source.startswith("vocabulary genes drawn")
    assert batch["input_ids"].shape == (2, 12_000)
    for cell in batch["input_ids"]:
        assert cell[0] == tokenizer.cls_token_id and len(set(cell[1:].tolist())) == 11_999  # distinct genes
    assert (batch["expression_values"][:, 1:] > 0).all() and edges.shape[0] == 2
