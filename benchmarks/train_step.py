"""Whole training steps (forward, backward, AdamW) at 512 to 8,192 genes per cell: scgrn with the real CollecTRI
mask under each attention implementation, the same model `dense`, a Hugging Face `BertModel` of the same width,
depth and heads, and scGPT's `TransformerModel` where it imports. Each variant runs in its own process (peak
resident memory is its own). Also embedding throughput (inference) and model FLOP utilisation against a plain
matrix-multiply peak measured in the same run.

    python benchmarks/train_step.py [--lengths 512 1024 2048 4096 8192] [--tokens_per_batch 8192]

Cells are real genes of real cells (benchmarks/real_cells.py). The loss is the mean square of the last hidden
state for every variant, so all do the same work outside the encoder. MFU counts dense-equivalent model FLOPs
(6 x encoder parameters x tokens + 12 x layers x L^2 x hidden per cell), so a sparse model that skips work can
show more than the dense one at equal hardware use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from real_cells import (
    best_seconds,
    default_paths,
    load_real_cells,
    matmul_peak_flops,
    peak_rss_mib,
    run_isolated,
)

VARIANTS = ["scgrn_grn_structured", "scgrn_grn_sdpa_mask", "scgrn_grn_flex", "scgrn_dense", "bert", "scgpt"]


def build(variant: str, tokenizer, edges, length: int, size: dict):
    if variant == "bert":
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=len(tokenizer), hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                            num_attention_heads=size["heads"], intermediate_size=size["intermediate"],
                            max_position_embeddings=length, hidden_dropout_prob=0.0,
                            attention_probs_dropout_prob=0.0, attn_implementation="sdpa")
        model = BertModel(config, add_pooling_layer=False)
        return model, lambda b: model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
    if variant == "scgpt":
        from scgpt.model import TransformerModel  # noqa: raises ImportError where scGPT does not install

        model = TransformerModel(ntoken=len(tokenizer), d_model=size["hidden"], nhead=size["heads"],
                                 d_hid=size["intermediate"], nlayers=size["layers"], vocab={"<pad>": 0},
                                 dropout=0.0, pad_token="<pad>", input_emb_style="continuous")
        return model, lambda b: model._encode(b["input_ids"], b["expression_values"], b["attention_mask"] == 0)
    from modeling_scgrn import ScGrnConfig, ScGrnModel

    mode = "dense" if variant == "scgrn_dense" else "grn"
    implementation = {"scgrn_grn_structured": "grn_structured", "scgrn_grn_flex": "flex_attention"}.get(variant, "sdpa")
    config = ScGrnConfig(vocab_size=len(tokenizer), hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], intermediate_size=size["intermediate"],
                         value_encoding="continuous", hidden_dropout_prob=0.0, grn_mode=mode,
                         attn_implementation=implementation)
    model = ScGrnModel(config)
    model.set_grn_edges(edges)
    return model, lambda b: model(input_ids=b["input_ids"], expression_values=b["expression_values"],
                                  attention_mask=b["attention_mask"]).last_hidden_state


def one(variant: str, length: int, options) -> dict:
    cells = max(1, options.tokens_per_batch // length)
    tokenizer, batch, edges, _ = load_real_cells(Path(options.input), Path(options.prior), length, cells)
    size = dict(hidden=options.hidden, layers=options.layers, heads=options.heads, intermediate=options.intermediate)
    torch.manual_seed(0)
    model, encode = build(variant, tokenizer, edges, length, size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rss_before = peak_rss_mib()

    def train_step() -> None:
        model.train()
        encode(batch).float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # torch has no flex-attention backward on CPU: there the flex model is measured for inference only
    trains = not (variant == "scgrn_grn_flex" and batch["input_ids"].device.type == "cpu")
    step = best_seconds(train_step, options.repeats) if trains else None
    model.eval()
    with torch.inference_mode():
        inference = best_seconds(lambda: encode(batch), 1)
    encoder_params = sum(p.numel() for name, p in model.named_parameters() if "embedding" not in name)
    flops = 6 * encoder_params * cells * length + 12 * size["layers"] * length**2 * size["hidden"] * cells
    return {"variant": variant, "length": length, "cells": cells, "step_s": step,
            "cells_per_s": None if step is None else cells / step,
            "inference_cells_per_s": cells / inference, "model_flops": flops, "peak_rss_mib": peak_rss_mib(),
            "rss_before_mib": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h5ad, prior = default_paths()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--tokens_per_batch", type=int, default=8192, help="cells per batch = this // length")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input", default=str(h5ad))
    parser.add_argument("--prior", default=str(prior))
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return
    peak = matmul_peak_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; hidden {args.hidden}, {args.layers} layers, "
          f"{args.heads} heads, intermediate {args.intermediate}; {args.tokens_per_batch} tokens per batch; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s (fp32)")
    common = [f"--{k}={getattr(args, k)}" for k in ("tokens_per_batch", "hidden", "layers", "heads", "intermediate",
                                                    "repeats", "input", "prior")]
    print("| genes | variant | s / step | cells/s train | vs dense | cells/s embed | vs dense | peak RSS MiB "
          "(+ over data) | MFU |\n|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        results = {v: run_isolated(Path(__file__), ["--one", v, str(length), *common], args.timeout)
                   for v in args.variants}
        base = results.get("scgrn_dense", {})
        for variant, r in results.items():
            if "error" in r:
                print(f"| {length} | {variant} | {r['error']} | | | | | | |")
                continue
            embed_ratio = (f"{r['inference_cells_per_s'] / base['inference_cells_per_s']:.2f}x"
                           if "inference_cells_per_s" in base else "-")
            if r["step_s"] is None:
                train = "inference only (no flex backward on CPU) | - | -"
                mfu = "-"
            else:
                train_ratio = f"{r['cells_per_s'] / base['cells_per_s']:.2f}x" if base.get("cells_per_s") else "-"
                train = f"{r['step_s']:.3f} | {r['cells_per_s']:.2f} | {train_ratio}"
                mfu = f"{100 * r['model_flops'] / r['step_s'] / peak:.0f}%"
            print(f"| {length} | {variant} | {train} | {r['inference_cells_per_s']:.2f} | {embed_ratio} | "
                  f"{r['peak_rss_mib']:.0f} (+{r['peak_rss_mib'] - r['rss_before_mib']:.0f}) | {mfu} |")


if __name__ == "__main__":
    main()
