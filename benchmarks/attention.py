"""GRN attention vs dense attention: time of forward + backward and peak memory, real genes of real cells, the
real CollecTRI mask, from 512 to 8,192 genes per cell. Each variant runs in its own process.

    python benchmarks/attention.py [--lengths 512 1024 2048 4096 8192] [--cells 2] [--heads 8] [--head_dim 32]

Variants (same random q, k, v for each length; the mask or plan is built from the cells' real gene ids, and
the time to build it is included, once per step as in the model, where it is shared by all layers):
  dense_sdpa       torch SDPA without a mask (what an unconstrained Transformer pays; the reference, 1.00x)
  grn_sdpa_mask    SDPA with the boolean (batch, 1, L, L) GRN mask (exact)
  grn_eager        matmul + masked softmax (exact; skipped above 4,096 genes: L^2 probabilities per head)
  grn_structured   scgrn's prior-structured exact attention: queries x (regulators present + self + CLS)
  grn_flex         torch flex attention (compiled) with scgrn's block mask, tokens reordered regulators-first as the
                   model does; torch has no flex backward on CPU, so on CPU it is timed forward only against dense
                   SDPA's forward measured in the same process (compilation happens in the warm-up)
Prints ms per step, the ratio to dense_sdpa, peak resident memory, and the largest difference from grn_sdpa_mask.
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
    peak_rss_mib,
    run_isolated,
)

VARIANTS = ["dense_sdpa", "grn_sdpa_mask", "grn_eager", "grn_structured", "grn_flex"]


def one(variant: str, length: int, cells: int, heads: int, head_dim: int, repeats: int, h5ad, prior) -> dict:
    from types import SimpleNamespace

    from transformers.integrations.flex_attention import flex_attention_forward

    from modeling_scgrn.model.kernels import (
        eager_attention_forward,
        flex_compile_scope,
        grn_structured_attention_forward,
    )
    from modeling_scgrn.model.masks import (
        build_attention_mask,
        build_block_mask,
        build_structured_plan,
        edge_keys,
        regulators_first_order,
    )
    from modeling_scgrn.model.modeling_scgrn import _gather_tokens

    tokenizer, batch, edges, _ = load_real_cells(h5ad, prior, length, cells)
    ids, valid = batch["input_ids"], batch["attention_mask"]
    options = dict(vocab_size=len(tokenizer), cls_token_id=tokenizer.cls_token_id,
                   special_token_ids=tuple(tokenizer.all_special_ids))
    keys, regulators = edge_keys(edges, len(tokenizer)), torch.unique(edges[0])
    generator = torch.Generator().manual_seed(0)
    qkv = [torch.randn(cells, heads, length, head_dim, generator=generator) for _ in range(3)]
    module = SimpleNamespace(training=False)
    scaling = head_dim**-0.5
    rss_before = peak_rss_mib()
    forward_only = variant == "grn_flex" and qkv[0].device.type == "cpu"  # torch: no flex backward on CPU

    def flex_step(q, k, v) -> torch.Tensor:
        order = regulators_first_order(ids, regulators, tokenizer.cls_token_id)
        block_mask = build_block_mask(ids.gather(1, order), valid.gather(1, order), edges, dense=False, keys=keys,
                                      **options)
        along = order[:, None, :, None].expand_as(q)
        with flex_compile_scope("flex_attention", q.device):
            out, _ = flex_attention_forward(module, q.gather(2, along), k.gather(2, along), v.gather(2, along),
                                            block_mask, scaling=scaling)
        return _gather_tokens(out, torch.argsort(order, dim=1))

    def step() -> torch.Tensor:
        q, k, v = (t.detach().requires_grad_(not forward_only) for t in qkv)
        if variant == "grn_flex":
            out = flex_step(q, k, v)
        elif variant == "dense_sdpa":
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        elif variant == "grn_structured":
            plan = build_structured_plan(ids, valid, keys=keys, regulators=regulators, **options)
            out, _ = grn_structured_attention_forward(module, q, k, v, plan, scaling)
        else:
            mask = build_attention_mask(ids, valid, edges, dense=False, keys=keys, **options)
            if variant == "grn_eager":
                out, _ = eager_attention_forward(module, q, k, v, mask, scaling)
            else:
                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        if not forward_only:
            out.pow(2).sum().backward()
        return out.detach()

    out = step()
    result = {"variant": variant, "length": length, "ms": 1000 * best_seconds(step, repeats),
              "peak_rss_mib": peak_rss_mib(), "rss_before_mib": rss_before, "forward_only": forward_only}
    if forward_only:
        dense_forward = lambda: torch.nn.functional.scaled_dot_product_attention(*qkv)  # noqa: E731
        result["dense_forward_ms"] = 1000 * best_seconds(dense_forward, repeats)
    if variant != "grn_sdpa_mask":
        mask = build_attention_mask(ids, valid, edges, dense=False, keys=keys, **options)
        q, k, v = qkv
        reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)
        result["max_abs_diff_vs_mask"] = float((out - reference).abs().max()) if variant != "dense_sdpa" else None
        plan = build_structured_plan(ids, valid, keys=keys, regulators=regulators, **options)
        result["regulators_per_cell"] = float(torch.isin(ids, regulators).sum(-1).float().mean())
        result["scored_pair_share"] = plan.scored_pairs / (cells * length**2)
        result["allowed_pair_share"] = float(mask.float().mean())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    h5ad, prior = default_paths()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--cells", type=int, default=2, help="cells per batch")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--input", default=str(h5ad), help="raw-count cells (default: ../shared/data celltypist sample)")
    parser.add_argument("--prior", default=str(prior), help="OmniPath/CollecTRI table (data/fetch_prior.py)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.cells, args.heads, args.head_dim, args.repeats,
                             Path(args.input), Path(args.prior))))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.cells} cells x {args.heads} heads x "
          f"head_dim {args.head_dim}; forward + backward, best of {args.repeats}")
    common = ["--cells", str(args.cells), "--heads", str(args.heads), "--head_dim", str(args.head_dim),
              "--repeats", str(args.repeats), "--input", args.input, "--prior", args.prior]
    header = "| genes | variant | ms / step | vs dense_sdpa | peak RSS MiB (+ over data) | max diff vs mask |"
    print(header + "\n|---|---|---|---|---|---|")
    for length in args.lengths:
        results = {}
        for variant in args.variants:
            if variant == "grn_eager" and length > 4096:
                continue
            results[variant] = run_isolated(Path(__file__), ["--one", variant, str(length), *common], args.timeout)
        base = results.get("dense_sdpa", {}).get("ms")
        info = next((r for r in results.values() if "regulators_per_cell" in r), {})
        for variant, r in results.items():
            if "error" in r:
                print(f"| {length} | {variant} | {r['error']} | | | |")
                continue
            ratio = f"{r['ms'] / base:.2f}x" if base else "-"
            if r.get("forward_only"):
                ratio = f"{r['ms'] / r['dense_forward_ms']:.2f}x of dense forward ({r['dense_forward_ms']:.1f} ms)"
            diff = r.get("max_abs_diff_vs_mask")
            label = f"{variant} (forward only)" if r.get("forward_only") else variant
            print(f"| {length} | {label} | {r['ms']:.1f} | {ratio} | {r['peak_rss_mib']:.0f} "
                  f"(+{r['peak_rss_mib'] - r['rss_before_mib']:.0f}) | "
                  f"{'-' if diff is None else f'{diff:.1e}'} |")
        if info:
            print(f"|  | ({info['regulators_per_cell']:.0f} regulators per cell, "
                  f"{100 * info['allowed_pair_share']:.2f}% of pairs allowed) | | | | |")


if __name__ == "__main__":
    main()
