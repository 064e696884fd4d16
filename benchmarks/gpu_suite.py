"""Everything scgrn needs checked on a GPU, in one command of at most 10 minutes, with a CPU dry run that keeps it
from rotting (the test suite runs `--device cpu --quick`).

    python benchmarks/gpu_suite.py [--device cuda|cpu] [--quick] [--output_dir benchmarks/gpu_results]

1. Correctness: every attention implementation (eager, sdpa, grn_structured, flex_attention) against eager in
   float32, forward and backward, in float32 and bf16 autocast, on real cells with the real CollecTRI prior and
   padding; and two identical training steps of the default kernel compared bit for bit (determinism of its
   index_add/scatter kernels).
2. Speed: bf16 (autocast) training step and embedding throughput for `grn_structured`, `flex_attention`, the same
   model `dense` (SDPA, flash kernel) and a `BertModel` of the same size, at 2,048 to 32,768 genes per cell; model
   FLOP utilisation against a bf16 matmul peak measured in the same run; peak memory from
   `torch.cuda.max_memory_allocated` (not measured on CPU).
3. Mask cost, device-independent work: for `grn_structured` and `flex_attention`, the share of the L^2 scores each
   computes on these cells (scored pairs; 128 x 128 blocks not skipped) and the time (and on CUDA the peak memory)
   to build its mask for one batch.
4. The default: from the training-step times, the fastest exact kernel for the GRN mask at each length, beside the
   kernel the default `attn_implementation="grn_auto"` runs on this device (`modeling_scgrn.model.kernels.DEVICE_ATTENTION`).
5. A 1-process `accelerate launch pretrain/run.py` in bf16 mixed precision.

Cells are real genes of real cells (benchmarks/real_cells.py) up to the celltypist sample's 9,810 distinct genes;
longer cells take vocabulary genes drawn with the sample's detection frequencies and values drawn from its values,
and the output says which. Writes `gpu_suite.md` and `gpu_suite.json` under --output_dir.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from real_cells import ROOT, best_seconds, default_paths, load_real_cells
from train_step import build

IMPLEMENTATIONS = ["eager", "sdpa", "grn_structured", "flex_attention"]
SPEED_VARIANTS = ["scgrn_grn_structured", "scgrn_grn_flex", "scgrn_dense", "bert"]
SECTIONS = ["correctness", "speed", "mask_cost", "accelerate"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@functools.cache  # the speed and mask-cost rows of one length share their cells: read and tokenized once
def cells(h5ad: Path, prior: Path, length: int, count: int, seed: int = 0):
    """`(tokenizer, batch, edges, source)`: real cells where the sample has enough distinct genes, else cells of
    vocabulary genes drawn with the sample's detection frequencies (`source` says which). Callers leave them as
    they are (moving to a device or padding makes new tensors)."""
    try:
        tokenizer, batch, edges, _ = load_real_cells(h5ad, prior, length, count, seed)
        return tokenizer, batch, edges, "real cells"
    except ValueError:
        pass
    tokenizer, reference, edges, _ = load_real_cells(h5ad, prior, 2048, 8, seed)
    import anndata as ad

    detected = np.asarray((ad.read_h5ad(h5ad).X > 0).sum(0)).ravel().astype(np.float64) + 0.5  # never-seen genes too
    genes = np.asarray(tokenizer.gene_vocab_ids)
    rng = np.random.default_rng(seed)
    genes_only = reference["attention_mask"][:, 1:].bool()  # [CLS] first, no value
    values = reference["expression_values"][:, 1:][genes_only].numpy()
    bins = reference["expression_bins"][:, 1:][genes_only].numpy()
    ids, chosen = [], rng.integers(0, values.size, size=(count, length - 1))
    for _ in range(count):
        ids.append([tokenizer.cls_token_id, *rng.choice(genes, size=length - 1, replace=False,
                                                        p=detected / detected.sum()).tolist()])
    zero = torch.zeros(count, 1)
    batch = {"input_ids": torch.tensor(ids),
             "expression_values": torch.cat([zero, torch.from_numpy(values[chosen])], 1).float(),
             "expression_bins": torch.cat([zero.long(), torch.from_numpy(bins[chosen]).long()], 1),
             "attention_mask": torch.ones(count, length, dtype=torch.long)}
    return tokenizer, batch, edges, "vocabulary genes drawn with the sample's detection frequencies"


def padded(batch: dict, pad_token_id: int) -> dict:
    """The batch with its cells cut to different lengths (every other cell loses its last third): padding inside."""
    batch = {k: v.clone() for k, v in batch.items()}
    length = batch["input_ids"].shape[1]
    for cell in range(1, batch["input_ids"].shape[0], 2):
        batch["attention_mask"][cell, 2 * length // 3:] = 0
    batch["input_ids"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad_token_id)
    batch["expression_values"] = batch["expression_values"].masked_fill(batch["attention_mask"] == 0, 0.0)
    return batch


def _outputs_and_grads(model, batch, autocast_dtype):
    """Outputs at real positions, and the parameters' gradients (None where the kernel has no backward here)."""
    model.zero_grad(set_to_none=True)
    device = batch["input_ids"].device.type
    no_backward = model.config._attn_implementation == "flex_attention" and device == "cpu"
    with torch.set_grad_enabled(not no_backward), torch.autocast(device, dtype=autocast_dtype,
                                                                 enabled=autocast_dtype is not None):
        hidden = model(**batch).last_hidden_state
    real = batch["attention_mask"].bool()
    if no_backward:  # torch has no flex-attention backward on CPU
        return hidden.float()[real].detach(), None
    hidden.float()[real].pow(2).mean().backward()
    return hidden.float()[real].detach(), {n: p.grad.float().clone() for n, p in model.named_parameters()
                                           if p.grad is not None}


def correctness(tokenizer, batch, edges, device) -> list[dict]:
    """Each implementation's largest difference from eager in float32: outputs at real positions and gradients."""
    from modeling_scgrn import ScGrnConfig, ScGrnModel

    config = dict(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=128, value_encoding="continuous", hidden_dropout_prob=0.0, grn_dense_last_layers=1)
    torch.manual_seed(0)
    reference_model = ScGrnModel(ScGrnConfig(**config, attn_implementation="eager")).to(device)
    reference_model.set_grn_edges(edges)
    weights = reference_model.state_dict()
    want, want_grads = _outputs_and_grads(reference_model, batch, None)
    rows = []
    for implementation in IMPLEMENTATIONS:
        model = ScGrnModel(ScGrnConfig(**config, attn_implementation=implementation)).to(device)
        model.set_grn_edges(edges)
        model.load_state_dict(weights)
        for dtype in (None, torch.bfloat16):
            row = {"implementation": implementation, "dtype": "bf16" if dtype else "fp32"}
            try:
                got, grads = _outputs_and_grads(model, batch, dtype)
                row["output_max_abs_diff"] = float((got - want).abs().max())
                row["grad_max_abs_diff"] = None if grads is None else max(
                    float((grads[n] - g).abs().max()) for n, g in want_grads.items())
            except Exception as error:  # a kernel failing on this device is a finding to report, not a crash
                row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            rows.append(row)
    return rows


def determinism(tokenizer, batch, edges, device, deterministic: bool = False) -> dict:
    """Two identical AdamW steps of the default kernel, from the same weights and batch: the largest difference.
    With `deterministic`, under `torch.use_deterministic_algorithms(True)` (what `training.deterministic` sets)."""
    from modeling_scgrn.model.kernels import attention_on

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        finals, implementation = _two_runs(tokenizer, batch, edges, device)
    finally:
        torch.use_deterministic_algorithms(previous)
    difference = max(float((finals[0][n] - finals[1][n]).abs().max()) for n in finals[0])
    return {"implementation": f"{implementation} ({attention_on(implementation, device)})",
            "deterministic_algorithms": deterministic, "max_abs_diff_after_2_steps": difference,
            "bitwise_identical": difference == 0.0}


def _two_runs(tokenizer, batch, edges, device) -> tuple[list[dict], str]:
    """The parameters after two AdamW steps of a default model, twice from the same seed; and its implementation."""
    from modeling_scgrn import ScGrnConfig, ScGrnModel

    finals = []
    for _ in range(2):
        torch.manual_seed(0)
        model = ScGrnModel(ScGrnConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=128, value_encoding="continuous",
                                       hidden_dropout_prob=0.0)).to(device)
        model.set_grn_edges(edges)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(2):
            model(**batch).last_hidden_state.float().pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
        finals.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return finals, model.config._attn_implementation


def bf16_matmul_peak(device, size: int = 4096, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    return 2 * size**3 / best_seconds(lambda: (a @ b, synchronize(device)), repeats)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed(variant: str, length: int, args, device, peak: float) -> dict:
    """bf16 autocast training step and embedding throughput of one variant at one length."""
    count = max(1, args.tokens_per_batch // length)
    tokenizer, batch, edges, source = cells(Path(args.input), Path(args.prior), length, count)
    batch = {k: v.to(device) for k, v in batch.items()}
    size = dict(hidden=args.hidden, layers=args.layers, heads=args.heads, intermediate=args.intermediate)
    torch.manual_seed(0)
    model, encode = build(variant, tokenizer, edges, length, size)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = encode(batch).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)

    row = {"variant": variant, "length": length, "cells": count, "cells_from": source}
    try:
        trains = not (variant == "scgrn_grn_flex" and device.type == "cpu")  # no flex backward on CPU
        row["step_s"] = best_seconds(train_step, args.repeats) if trains else None
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            row["embed_cells_per_s"] = count / best_seconds(lambda: (encode(batch), synchronize(device)), 1)
    except Exception as error:  # out of memory at 32,768 genes is a result, not a crash of the suite
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    encoder_params = sum(p.numel() for name, p in model.named_parameters() if "embedding" not in name)
    flops = 6 * encoder_params * count * length + 12 * size["layers"] * length**2 * size["hidden"] * count
    if row.get("step_s"):
        row["train_cells_per_s"], row["mfu"] = count / row["step_s"], flops / row["step_s"] / peak
    if device.type == "cuda":
        row["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    model = optimizer = batch = None  # free the GPU before the next variant
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def mask_cost(kernel: str, length: int, args, device) -> dict:
    """The share of the L^2 scores `kernel` computes on these cells (structured pairs, or flex's 128 x 128 blocks not
    skipped) and the time (peak memory on CUDA) to build its mask for one batch, in the model's own token order:
    the first build (flex's includes compiling `create_block_mask`) and a second one."""
    from modeling_scgrn import ScGrnConfig, ScGrnModel
    from modeling_scgrn.model.masks import regulators_first_order

    count = max(1, args.tokens_per_batch // length)
    tokenizer, batch, edges, source = cells(Path(args.input), Path(args.prior), length, count)
    ids, real = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    model = ScGrnModel(ScGrnConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64, attn_implementation=kernel)).to(device)
    model.set_grn_edges(edges)
    if kernel == "flex_attention":  # regulators first, as the model lays tokens out for flex
        order = regulators_first_order(ids, model.grn_edges[0], model.config.cls_token_id)
        ids, real = ids.gather(1, order), real.gather(1, order)
    row = {"kernel": kernel, "length": length, "cells": count, "cells_from": source}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    try:
        for key in ("first_build_s", "build_s"):  # the first call compiles flex's create_block_mask
            start = time.perf_counter()
            mask = model.build_attention_masks(ids, real, boolean=False)[0]
            synchronize(device)
            row[key] = time.perf_counter() - start
        if hasattr(mask, "scored_pairs"):
            row["scored_share"] = mask.scored_pairs / (count * length**2)
        else:
            full = 0 if mask.full_kv_num_blocks is None else int(mask.full_kv_num_blocks.sum())
            row["scored_share"] = (int(mask.kv_num_blocks.sum()) + full) / mask.kv_indices.numel()
    except Exception as error:  # flex's block mask at 32,768 genes may not fit: a result
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    if device.type == "cuda":
        row["build_peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
    else:  # the process's high-water mark: run one length and kernel per process to read it as the build's
        row["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mask = model = None
    return row


def default_choice(report: dict, device) -> dict:
    """The fastest kernel for training with the GRN mask at each length, among those exact on this device (forward
    and backward within 1e-3 of eager in float32), beside the kernel `attn_implementation="grn_auto"` runs here."""
    from modeling_scgrn.model.kernels import attention_on

    kernels = {"scgrn_grn_structured": "grn_structured", "scgrn_grn_flex": "flex_attention"}
    exact = {r["implementation"] for r in report["correctness"] if r["dtype"] == "fp32" and "error" not in r
             and r["grad_max_abs_diff"] is not None and max(r["output_max_abs_diff"], r["grad_max_abs_diff"]) < 1e-3}
    fastest = {}
    for row in report["speed"]:
        kernel = kernels.get(row["variant"])
        if kernel in exact and row.get("step_s") and row["step_s"] < fastest.get(row["length"], (None, 1e30))[1]:
            fastest[row["length"]] = (kernel, row["step_s"])
    default = attention_on("grn_auto", device)
    measured = {str(length): kernel for length, (kernel, _) in sorted(fastest.items())}
    return {"default": default, "fastest_training_kernel": measured,
            "default_is_fastest": bool(measured) and set(measured.values()) == {default}}


def accelerate_smoke(args, device, folder: Path) -> dict:
    """`accelerate launch` (1 process, bf16 mixed precision) of pretrain/run.py on pbmc68k_reduced."""
    steps = 2 if args.quick else 20
    command = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1", "--num_machines",
               "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", *(["--cpu"] if device.type == "cpu" else []),
               str(ROOT / "pretrain" / "run.py"), "--config", str(ROOT / "pretrain" / "configs" / "cpu_smoke.yaml"),
               "--input", "pbmc68k_reduced", "--prior", args.prior, "--max_length", "128",
               "--output_dir", str(folder / "pretrain"), "--set", f"training.max_steps={steps}",
               "--set", "training.mixed_precision=bf16", "--set", "training.show_progress=false",
               "--set", "training.report_to=none"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    summary = folder / "pretrain" / "summary.json"
    result = {"exit_status": done.returncode, "seconds": time.perf_counter() - start, "steps": steps}
    if done.returncode == 0 and summary.exists():
        result["validation_loss"] = json.loads(summary.read_text())["validation_loss"]
    else:
        result["error"] = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return result


def _correctness_lines(report: dict) -> list[str]:
    lines = ["| implementation | dtype | output max abs diff vs eager fp32 | grad max abs diff |",
             "| --- | --- | --- | --- |"]
    for row in report["correctness"]:
        if "error" in row:
            lines.append(f"| {row['implementation']} | {row['dtype']} | {row['error']} | |")
        else:
            grad = "no backward on CPU" if row["grad_max_abs_diff"] is None else f"{row['grad_max_abs_diff']:.2e}"
            lines.append(f"| {row['implementation']} | {row['dtype']} | {row['output_max_abs_diff']:.2e} | {grad} |")
    lines.append("")
    for d in report["determinism"]:
        lines.append(f"Determinism ({d['implementation']}, two identical 2-step runs"
                     + (", deterministic algorithms" if d["deterministic_algorithms"] else "") + "): max abs diff "
                     f"{d['max_abs_diff_after_2_steps']:.2e} ("
                     f"{'bitwise identical' if d['bitwise_identical'] else 'not identical'}).")
    return lines


def _speed_lines(report: dict) -> list[str]:
    lines = [f"bf16 matmul peak: {report['bf16_matmul_peak_tflops']:.1f} TFLOP/s", "",
             "| genes | variant | cells | s / step | cells/s train | MFU | cells/s embed | peak MiB | cells from |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["speed"]:
        step = "-" if r.get("step_s") is None else f"{r['step_s']:.3f}"
        train = "-" if "train_cells_per_s" not in r else f"{r['train_cells_per_s']:.2f}"
        mfu = "-" if "mfu" not in r else f"{100 * r['mfu']:.0f}%"
        embed = r.get("error") or f"{r['embed_cells_per_s']:.2f}"
        memory = f"{r['peak_memory_mib']:.0f}" if "peak_memory_mib" in r else "-"
        lines.append(f"| {r['length']} | {r['variant']} | {r['cells']} | {step} | {train} | {mfu} | {embed} | "
                     f"{memory} | {r['cells_from']} |")
    return lines


def _mask_cost_lines(report: dict) -> list[str]:
    lines = ["| genes | kernel | cells | share of L^2 scores computed | mask build s (first) | build peak MiB (CUDA) "
             "/ process peak RSS MiB (CPU) | cells from |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["mask_cost"]:
        share = r.get("error") or f"{100 * r['scored_share']:.3g}%"
        build = "-" if "build_s" not in r else f"{r['build_s']:.3f} ({r['first_build_s']:.2f})"
        lines.append(f"| {r['length']} | {r['kernel']} | {r['cells']} | {share} | {build} | "
                     f"{r.get('build_peak_mib', r.get('process_peak_rss_mib', 0)):.0f} | {r['cells_from']} |")
    return lines


def _choice_lines(report: dict) -> list[str]:
    choice = report["default_choice"]
    fastest = ", ".join(f"{kernel} at {int(length):,}" for length, kernel in choice["fastest_training_kernel"].items())
    return [f"Default attention here (`grn_auto`): {choice['default']}; fastest exact kernel for a training step "
            f"by genes per cell: {fastest or 'none measured'}" + ("" if choice["default_is_fastest"] else
            " (the default is not the fastest measured here: see modeling_scgrn/model/kernels.py DEVICE_ATTENTION)") + "."]


def _accelerate_lines(report: dict) -> list[str]:
    a = report["accelerate"]
    return [f"accelerate launch pretrain/run.py, bf16, {a['steps']} steps: exit {a['exit_status']} in "
            f"{a['seconds']:.0f} s" + (f", validation loss {a['validation_loss']:.4f}" if "validation_loss" in a
                                       else f" ({a.get('error')})")]


MARKDOWN = {"correctness": _correctness_lines, "speed": _speed_lines, "mask_cost": _mask_cost_lines,
            "default_choice": _choice_lines, "accelerate": _accelerate_lines}


def markdown(report: dict) -> str:
    lines = [f"GPU suite on {report['device']} (torch {report['torch']}), {report['date']}"
             + (" [quick]" if report["quick"] else "")]
    for key, section in MARKDOWN.items():
        if key in report:
            lines += ["", *section(report)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h5ad, prior = default_paths()
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run, under a minute)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="genes per cell (default 2,048 to "
                        "32,768; --quick: 128 and 256)")
    parser.add_argument("--tokens_per_batch", type=int, default=None, help="cells per batch = this // length")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=688)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input", default=str(h5ad))
    parser.add_argument("--prior", default=str(prior))
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "gpu_results"))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS,
                        help="parts to run (default: all); --sections mask_cost measures the masks alone")
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any cuBLAS handle: deterministic runs
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; run --device cpu --quick for the dry run")
    if args.quick:
        args.hidden, args.layers, args.heads, args.intermediate, args.repeats = 32, 1, 2, 64, 1
    args.lengths = args.lengths or ([128, 256] if args.quick else [2048, 8192, 16384, 32768])
    args.tokens_per_batch = args.tokens_per_batch or (512 if args.quick else 32768)
    device = torch.device(args.device)
    report = run(args, device)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    (output / "gpu_suite.json").write_text(json.dumps(report, indent=2))
    (output / "gpu_suite.md").write_text(markdown(report))
    print(markdown(report))


def run(args, device) -> dict:
    report = {"device": device_name(device), "torch": torch.__version__, "quick": args.quick,
              "date": time.strftime("%Y-%m-%d")}
    if "correctness" in args.sections:
        tokenizer, batch, edges, source = cells(Path(args.input), Path(args.prior), 128 if args.quick else 1024, 4)
        batch = {k: v.to(device) for k, v in padded(batch, tokenizer.pad_token_id).items()}
        report.update(correctness_cells_from=source, correctness=correctness(tokenizer, batch, edges, device),
                      determinism=[determinism(tokenizer, batch, edges, device, deterministic)
                                   for deterministic in (False, True)])
    if "speed" in args.sections:
        peak = bf16_matmul_peak(device, 512 if args.quick else 8192)
        report.update(bf16_matmul_peak_tflops=peak / 1e12, speed=[
            speed(variant, length, args, device, peak) for length in args.lengths for variant in SPEED_VARIANTS])
    if "mask_cost" in args.sections:
        report["mask_cost"] = [mask_cost(kernel, length, args, device) for length in args.lengths
                               for kernel in ("grn_structured", "flex_attention")]
    if "correctness" in report and "speed" in report:
        report["default_choice"] = default_choice(report, device)
    if "accelerate" in args.sections:
        with tempfile.TemporaryDirectory(prefix="scgrn-gpu-suite-") as folder:
            report["accelerate"] = accelerate_smoke(args, device, Path(folder))
    return report


if __name__ == "__main__":
    main()
