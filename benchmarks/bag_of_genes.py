"""The gene-detection objective on the simplest encoder there is, to see how many steps it needs to teach an
embedding cell types: a cell's embedding is the mean of learned gene embeddings over the genes its input shows (half
of its detected genes, as `view_gene_dropout 0.5`), and a decoder predicts, from that embedding and the cell's log
gene count, which of the genes it does not show it detects (binary cross-entropy, as `detection_weight` does in
scgrn). After each number of steps the frozen embedding of every cell (all its genes shown) is read by the same
5-fold logistic regression as `objectives.py` reads scgrn's, beside 50 principal components of the counts.

    python benchmarks/bag_of_genes.py --input cells.h5ad --label_column cell_type \
        [--learning_rates 0.002 0.03] [--steps 1000 6000] [--batch_size 16]

No scgrn model is trained here: the point is a yardstick for scgrn's pretraining budget (the quickstart's recipe
pretrains at learning rate 0.002 with 16 cells a step). Not a test: numbers depend on the machine and the seed.
"""

import argparse
import platform

import numpy as np
import torch

from modeling_scgrn.options import arguments as shared

HIDDEN = 64


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="raw-count cells (.h5ad) or 'pbmc68k_reduced'")
    parser.add_argument("--label_column", required=True, help="obs column the probe reads")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[0.002, 0.03])
    parser.add_argument("--steps", type=shared.count, nargs="+", default=[1000, 6000])
    parser.add_argument("--batch_size", type=shared.count, default=16)
    parser.add_argument("--seed", type=shared.seed, default=0)
    shared.add_housekeeping(parser, output=None)
    return parser.parse_args(argv)


class BagOfGenes(torch.nn.Module):
    """Mean of gene embeddings over the shown genes; detection logits of every gene from it and the log gene count."""

    def __init__(self, genes: int):
        super().__init__()
        self.embeddings = torch.nn.Parameter(torch.randn(genes, HIDDEN) * 0.02)
        self.project = torch.nn.Linear(HIDDEN, HIDDEN)
        self.decoder = torch.nn.Parameter(torch.randn(genes, HIDDEN) * 0.02)
        self.offset = torch.nn.Parameter(torch.zeros(genes))
        self.slope = torch.nn.Parameter(torch.zeros(genes))

    def embed(self, shown: torch.Tensor) -> torch.Tensor:
        return self.project(shown / shown.sum(1, keepdim=True).clamp(min=1) @ self.embeddings)

    def loss(self, detected: torch.Tensor, shown: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        logits = self.embed(shown) @ self.decoder.T + self.offset + self.slope * depth[:, None]
        scored = 1 - shown
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, detected, reduction="none")
        return (bce * scored).sum() / scored.sum()


def train_and_read(detected, labels, learning_rate: float, checkpoints: list[int], batch_size: int, seed: int):
    """`{steps: probe accuracy}` at every checkpoint (0: the random start)."""
    from modeling_scgrn.evaluation.probe import cross_validated_probe

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = BagOfGenes(detected.shape[1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    depth = detected.sum(1).clamp(min=1).log()
    depth = depth - depth.mean()

    def read() -> float:
        with torch.no_grad():
            embedding = model.embed(detected).numpy()
        return cross_validated_probe(embedding, {"label": labels}, {}, seed=seed)["label"]["accuracy"]

    scores = {0: read()}
    for step in range(1, max(checkpoints) + 1):
        rows = torch.randint(0, len(detected), (batch_size,), generator=generator)
        shown = detected[rows] * (torch.rand(batch_size, detected.shape[1], generator=generator) < 0.5)
        loss = model.loss(detected[rows], shown, depth[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step in checkpoints:
            scores[step] = read()
    return scores


def main(argv=None) -> None:
    from modeling_scgrn.workflows.cli import run_script

    args = arguments(argv)
    run_script(args, lambda: measure(args))


def measure(args) -> None:
    from modeling_scgrn.workflows.objectives import pca_yardstick

    if min(args.learning_rates) <= 0:
        raise ValueError(f"--learning_rates {args.learning_rates}: every learning rate must be above 0.")
    adata, labels, _, pca = pca_yardstick(args.input, args.label_column, args.seed)
    matrix = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    detected = torch.tensor(matrix > 0, dtype=torch.float32)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; {adata.n_obs:,} cells x {adata.n_vars:,} genes, {args.batch_size} cells a step, "
          f"seed {args.seed}")
    checkpoints = sorted(set(args.steps))
    print(f"\n| learning rate | random start | {' | '.join(f'{s:,} steps' for s in checkpoints)} |")
    print("| --- | --- |" + " --- |" * len(checkpoints))
    for rate in args.learning_rates:
        scores = train_and_read(detected, labels, rate, checkpoints, args.batch_size, args.seed)
        print(f"| {rate:g} | {scores[0]:.3f} | {' | '.join(f'{scores[s]:.3f}' for s in checkpoints)} |")
    print(f"\nFrozen embedding, 5-fold logistic regression of `{args.label_column}` (accuracy); 50 principal "
          f"components of the log-normalised counts read the same way: {pca:.3f}.")


if __name__ == "__main__":
    main()
