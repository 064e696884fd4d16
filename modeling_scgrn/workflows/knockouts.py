"""Knockout validation run: models and a simulated corpus in, per-gene scores beside a linear baseline out.
"""

from __future__ import annotations

from ..bench.knockouts import knockout_candidates, knockout_markdown, plot_knockout_scores, validate_knockouts


def run_knockout_validation(corpus_path, model_folders: dict, output_dir, *, genes=None, n_truth_cells: int = 2000,
                            n_model_cells: int = 300, rounds: int = 1) -> str:
    """`validate_knockouts` from files; writes `knockout.md`, `knockout.csv` and `knockout.png` into `output_dir`
    and returns the markdown."""
    from pathlib import Path

    import anndata

    from ..bench.simulate import true_edges
    from ..hub.model_folder import load_pretrained
    from ..model.modeling_scgrn import ScGrnForMaskedExpressionModeling
    from ..model.tokenization_scgrn import ScGrnTokenizer

    corpus = anndata.read_h5ad(corpus_path, backed="r")
    corpus = anndata.AnnData(obs=corpus.obs.iloc[:0], var=corpus.var, uns=dict(corpus.uns))  # the recipe only
    genes = list(genes or knockout_candidates(true_edges(corpus)))
    models = {name: (load_pretrained(ScGrnForMaskedExpressionModeling, folder, trained_head=True),
                     ScGrnTokenizer.from_pretrained(folder)) for name, folder in model_folders.items()}
    scores = validate_knockouts(corpus, models, genes, n_truth_cells=n_truth_cells, n_model_cells=n_model_cells,
                                rounds=rounds)
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    scores.to_csv(output / "knockout.csv", index=False)
    plot_knockout_scores(scores, output / "knockout.png")
    markdown = knockout_markdown(scores)
    (output / "knockout.md").write_text(markdown)
    return markdown
