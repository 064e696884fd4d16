"""Pretraining step speed of the CPU smoke model with the GRN mask vs the same model dense, measured side by side.

    python benchmarks/pretrain_step.py --data runs/smoke/data [--steps 30] [--batch_size 16]

`--data` is a folder from data/tokenize_cells.py. Prints steps/s and cells/s for grn_mode="grn" and "dense"
(forward, backward and AdamW step on real batches, after warm-up) and their ratio. Not a test: numbers depend
on the machine.
"""

import argparse
import time
from pathlib import Path

import torch

from modeling_scgrn import ScGrnForMaskedExpressionModeling
from modeling_scgrn.cells.collators import DataCollatorForMaskedExpression
from modeling_scgrn.cells.prepared import load_prepared
from modeling_scgrn.grn.attach import attach_grn, new_config
from modeling_scgrn.workflows.cli import load_yaml_or_json

ROOT = Path(__file__).resolve().parents[1]


def measure(mode: str, model_options: dict, dataset, tokenizer, network, steps: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = ScGrnForMaskedExpressionModeling(new_config(tokenizer, **{**model_options, "grn_mode": mode}))
    attach_grn(model, network, tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    collator = DataCollatorForMaskedExpression.from_config(model.config, seed=0)
    batches = [collator([dataset[j] for j in range(i, i + batch_size)])
               for i in range(0, min(len(dataset), (steps + 3) * batch_size) - batch_size + 1, batch_size)]
    for batch in batches[:3]:  # warm-up
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    timed = batches[3 : 3 + steps]
    start = time.perf_counter()
    for batch in timed:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    elapsed = time.perf_counter() - start
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    return {"steps_per_s": len(timed) / elapsed, "cells_per_s": len(timed) * batch_size / elapsed,
            "tokens_per_s": tokens / elapsed, "steps": len(timed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder from data/tokenize_cells.py")
    parser.add_argument("--config", default=str(ROOT / "pretrain" / "configs" / "cpu_smoke.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=16)
    args = parser.parse_args()
    dataset, tokenizer, network, _ = load_prepared(args.data)
    model_options = load_yaml_or_json(args.config).get("model", {})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(dataset['train'])} training cells")
    results = {mode: measure(mode, model_options, dataset["train"], tokenizer, network, args.steps, args.batch_size)
               for mode in ("grn", "dense")}
    for mode, r in results.items():
        print(f"{mode:>6}: {r['steps_per_s']:.2f} steps/s, {r['cells_per_s']:.1f} cells/s, "
              f"{r['tokens_per_s']:.0f} tokens/s over {r['steps']} steps")
    print(f"grn / dense speed: {results['grn']['steps_per_s'] / results['dense']['steps_per_s']:.2f}x")


if __name__ == "__main__":
    main()
