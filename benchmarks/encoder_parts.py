"""Which part of scgrn's encoder loses cell type: the gene-detection objective (`model.detection_weight`: from the
pooled embedding of a cell whose input shows a random half of its detected genes, predict which of the others it
detects) trained on scgrn's encoder with one part changed at a time, and after each number of steps every cell's
frozen embedding (all its genes shown) read by the same 5-fold logistic regression as `objectives.py` reads.

    python benchmarks/encoder_parts.py --input cells.h5ad --label_column cell_type \
        [--arms "2 blocks" "no blocks"] [--steps 300 1000] [--learning_rate 0.002]

Every arm: the quickstart's width (hidden 64, 4 heads), dense attention (the prior is not what loses cell type:
`benchmarks/README.md`), mean pooling, 16 cells a step, a constant learning rate (AdamW), genes and depth as the
pretraining collator gives them (log1p of counts per 10,000). Arms that add the masked-value terms (the token head
and the cell decoder) mask 15% of the shown values, as pretraining does. Not a test: numbers depend on the machine
and the seed.
"""

import argparse
import platform
import time

import numpy as np
import torch

from modeling_scgrn.options import arguments as shared

BASE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=172, hidden_dropout_prob=0.0,
            value_encoding="continuous", grn_mode="dense", pooling="mean", cell_decoder="none", contrastive_weight=0.0,
            detection_weight=1.0)
# name -> (config entries over BASE, what the arm changes by hand: "values" (every shown value 1.0), "no_final_norm",
# "embedding_scale" (gene embeddings initialised this many times larger), "masked_values" (add the token head's and
# the cell decoder's masked-value losses))
ARMS = {
    "2 blocks": ({}, {}),
    "no blocks": ({"num_hidden_layers": 0}, {}),
    "2 blocks, every value shown as 1": ({}, {"values": 1.0}),
    "2 blocks, no final LayerNorm": ({}, {"no_final_norm": True}),
    "2 blocks, gene embeddings initialised 50x larger": ({}, {"embedding_scale": 50.0}),
    "2 blocks, embedding LayerNorm": ({"embedding_layer_norm": True}, {}),
    "2 blocks + masked values (token head, cell decoder)": ({"cell_decoder": "mvc"}, {"masked_values": True}),
    "2 blocks, embedding LayerNorm + masked values": ({"embedding_layer_norm": True, "cell_decoder": "mvc"},
                                                      {"masked_values": True}),
}
SPECIALS = 4  # [PAD], [CLS], [MASK], [UNK]: gene g is token g + 4


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="raw-count cells (.h5ad) or 'pbmc68k_reduced'")
    parser.add_argument("--label_column", required=True, help="obs column the probe reads")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), help=f"which arms, of {list(ARMS)}")
    parser.add_argument("--steps", type=shared.count, nargs="+", default=[300, 1000])
    parser.add_argument("--learning_rate", type=float, default=0.002)
    parser.add_argument("--seed", type=shared.seed, default=0)
    shared.add_housekeeping(parser, output=None)
    return parser.parse_args(argv)


class Cells:
    """The cells as the pretraining collator gives them: each cell's detected genes and their log1p values, views
    that show a random half of them (a seeded generator), and 15% of the shown values masked where asked."""

    def __init__(self, values: torch.Tensor, seed: int, shown_value: float | None):
        self.values, self.detected = values, values > 0
        self.generator = torch.Generator().manual_seed(seed)
        self.shown_value = shown_value

    def batch(self, rows, keep: float, mask: float, mask_value: float) -> dict:
        ids, values, labels, whole = [], [], [], []
        for row in rows:
            genes = torch.nonzero(self.detected[row]).squeeze(1)
            shown = genes if keep >= 1 else genes[torch.rand(len(genes), generator=self.generator) < keep]
            shown = shown if len(shown) else genes[:1]
            value = self.values[row, shown].clone()
            value = torch.full_like(value, self.shown_value) if self.shown_value is not None else value
            label = torch.full_like(value, float("nan"))
            if mask > 0:
                hidden = torch.rand(len(value), generator=self.generator) < mask
                label[hidden], value[hidden] = value[hidden], mask_value
            ids.append(torch.cat([torch.tensor([1]), shown + SPECIALS]))
            values.append(torch.cat([torch.zeros(1), value]))
            labels.append(torch.cat([torch.tensor([float("nan")]), label]))
            whole.append(genes + SPECIALS)

        def pad(rows, fill):
            return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=fill)

        input_ids = pad(ids, 0)
        return {"input_ids": input_ids, "expression_values": pad(values, 0.0), "attention_mask": (input_ids != 0).long(),
                "labels": pad(labels, float("nan")) if mask > 0 else None, "cell_genes": pad(whole, 0)}


def build(arm: str, genes: int, shares: torch.Tensor, mean_log_genes: float, seed: int):
    from modeling_scgrn import ScGrnConfig, ScGrnForMaskedExpressionModeling

    entries, changes = ARMS[arm]
    torch.manual_seed(seed)
    model = ScGrnForMaskedExpressionModeling(ScGrnConfig(vocab_size=genes + SPECIALS, attn_implementation="sdpa",
                                                         **{**BASE, **entries}))
    if changes.get("no_final_norm"):
        model.scgrn.norm = torch.nn.Identity()
    with torch.no_grad():
        model.scgrn.embeddings.gene_embeddings.weight.mul_(changes.get("embedding_scale", 1.0))
    model.gene_detection_decoder.set_panel(torch.cat([torch.zeros(SPECIALS), shares]), mean_log_genes)
    return model, changes


def train_and_read(arm: str, values: torch.Tensor, labels, checkpoints: list[int], learning_rate: float, seed: int):
    """`{steps: (probe accuracy, running detection loss)}` at every checkpoint (0: the random start)."""
    from modeling_scgrn.evaluation.probe import cross_validated_probe

    detected = values > 0
    shares, log_genes = detected.float().mean(0), detected.sum(1).clamp(min=1).float().log()
    model, changes = build(arm, values.shape[1], shares, float(log_genes.mean()), seed)
    cells = Cells(values, seed, changes.get("values"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    masked = bool(changes.get("masked_values"))

    def read() -> float:
        model.eval()
        embedding = []
        with torch.no_grad():
            for start in range(0, len(values), 64):
                batch = cells.batch(range(start, min(start + 64, len(values))), 1.0, 0.0, model.config.mask_value)
                embedding.append(model.scgrn(batch["input_ids"], expression_values=batch["expression_values"],
                                             attention_mask=batch["attention_mask"]).pooler_output)
        model.train()
        embedding = torch.cat(embedding)
        return cross_validated_probe(embedding.numpy(), {"label": labels}, {}, seed=seed)["label"]["accuracy"]

    found, running = {0: (read(), None)}, None
    for step in range(1, max(checkpoints) + 1):
        rows = torch.randint(0, len(values), (16,), generator=cells.generator).tolist()
        output = model(**cells.batch(rows, 0.5, 0.15 if masked else 0.0, model.config.mask_value))
        loss = output.loss if masked else output.detection_loss
        running = output.detection_loss.item() if running is None else 0.98 * running + 0.02 * output.detection_loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            found[step] = (read(), running)
    return found


def main(argv=None) -> None:
    from modeling_scgrn.workflows.cli import run_script

    args = arguments(argv)
    run_script(args, lambda: measure(args))


def measure(args) -> None:
    from modeling_scgrn.workflows.objectives import pca_yardstick

    unknown = [arm for arm in args.arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"--arms {unknown}: not an arm; choose among {list(ARMS)}.")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning_rate {args.learning_rate}: it must be above 0.")
    adata, labels, normalised, pca = pca_yardstick(args.input, args.label_column, args.seed)
    matrix = normalised.X.toarray() if hasattr(normalised.X, "toarray") else np.asarray(normalised.X)
    values = torch.tensor(matrix, dtype=torch.float32)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {adata.n_obs:,} cells x {adata.n_vars:,} genes, 16 cells a step, learning rate "
          f"{args.learning_rate:g}, seed {args.seed}")
    checkpoints = sorted(set(args.steps))
    print(f"\n| arm | random start | {' | '.join(f'{s:,} steps' for s in checkpoints)} | detection loss | minutes |")
    print("| --- | --- |" + " --- |" * (len(checkpoints) + 2))
    for arm in args.arms:
        started = time.perf_counter()
        found = train_and_read(arm, values, labels, checkpoints, args.learning_rate, args.seed)
        print(f"| {arm} | {found[0][0]:.3f} | {' | '.join(f'{found[s][0]:.3f}' for s in checkpoints)} | "
              f"{found[checkpoints[-1]][1]:.4f} | {(time.perf_counter() - started) / 60:.1f} |", flush=True)
    print(f"\nFrozen embedding, 5-fold logistic regression of `{args.label_column}` (accuracy); detection loss: the "
          f"running mean of the training batches' at the last step. 50 principal components of the log-normalised "
          f"counts read the same way: {pca:.3f}.")


if __name__ == "__main__":
    main()
