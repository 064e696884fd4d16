"""High-level steps the scripts chain together: build a model on a prior, pretrain, finetune, and write a complete,
Hub-ready model folder (weights, tokenizer, GRN files, reports, model card)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .collators import DataCollatorForCellClassification, DataCollatorForMaskedExpression, WithClassWeights
from .configuration_scgrn import DEFAULT_N_BINS, ScGrnConfig
from .data import load_prepared, prepare_cells
from .evaluation import (
    COMPARED_METRICS,
    classification_baselines,
    classification_table,
    classification_metrics,
    embedding_metrics,
    gene_statistics,
    masked_baseline_table,
    masked_expression_metrics,
    plot_comparison,
    plot_confusion_matrix,
    plot_umap,
)
from .folders import jsonable
from .hub import check_compatible, check_model_source, load_pretrained, save_model_folder
from .modeling_scgrn import ScGrnForCellClassification, ScGrnForMaskedExpressionModeling
from .networks import GeneRegulatoryNetwork, coverage_line, prior_coverage
from .tokenization_scgrn import ScGrnTokenizer
from .training import TrainingConfig, launched_processes, train

logger = logging.getLogger(__name__)

def attach_grn(model, network: GeneRegulatoryNetwork, tokenizer: ScGrnTokenizer) -> torch.Tensor:
    """Put `network`'s edges among the tokenizer's genes into the model (the control replaces them for
    `grn_mode="random"`/`"shuffled"`). Returns the stored `(2, E)` vocabulary-id edges."""
    return model.set_grn_edges(network.to_vocab_edges(tokenizer))


def new_config(tokenizer: ScGrnTokenizer, **options) -> ScGrnConfig:
    """A config sized to the tokenizer (vocabulary, special ids, bins); `options` set every other field."""
    check_model_options(options)
    n_bins = options.pop("n_bins", None)
    if n_bins is not None and tokenizer.n_bins and n_bins != tokenizer.n_bins:
        raise ValueError(f"n_bins={n_bins} differs from the tokenizer's n_bins={tokenizer.n_bins}.")
    return ScGrnConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        mask_token_id=tokenizer.mask_token_id,
        unk_token_id=tokenizer.unk_token_id,
        n_bins=tokenizer.n_bins or n_bins or DEFAULT_N_BINS,
        **options,
    )


def check_model_options(options: dict) -> dict:
    """Refuse model options that `ScGrnConfig` does not define (before any work starts)."""
    import inspect

    known = set(inspect.signature(ScGrnConfig.__init__).parameters) - {"self", "kwargs"}
    known |= {"num_labels", "id2label", "label2id", "attn_implementation", "problem_type"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; see ScGrnConfig for the options.")
    return options


def tokenize_files(cells, prior: str | Path, output_dir, *, resource: str = "collectri", **options) -> dict:
    """`prepare_cells` from files: the prior is read from `prior` (OmniPath table or a source,target network file,
    filtered to `resource`) and printed; `options` go to `prepare_cells` (its keywords and `DataConfig` fields)."""
    network = GeneRegulatoryNetwork.read(prior, resource)
    print(network)
    return prepare_cells(cells, network, output_dir, **options)


def run_data(data_dir, output_dir, *, cells=None, soma=None, prior=None, resuming: bool = False, **options):
    """The tokenized data of a run: `data_dir` as given, or `cells` (.h5ad files or `pbmc68k_reduced`) tokenized
    with `prior` into `output_dir/data` first, or a SOMA experiment (`soma.SomaSource`) described there for
    streaming (`soma.prepare_soma`); a resumed run keeps the folder it wrote. `options` go to [`tokenize_files`]
    or `prepare_soma`; those given as None take their defaults."""
    if cells is None and soma is None:
        return data_dir
    folder = Path(output_dir) / "data"
    options = {k: v for k, v in options.items() if v is not None}

    def write():
        # a resumed run keeps its folder; in a run of several processes, another one may just have written it
        if (folder / "dataset").is_dir() and (resuming or launched_processes() > 1):
            return
        if soma is None:
            tokenize_files(cells, prior, folder, **options)
            return
        from .soma import prepare_soma

        network = GeneRegulatoryNetwork.read(prior, options.pop("resource", "collectri"))
        print(network)
        prepare_soma(soma, network, folder, **options)

    _in_turn(write)
    return folder


def _in_turn(write) -> None:
    """Run `write` once per folder in a run of several processes (torchrun, accelerate launch): first in process 0
    while the others wait, then in the first process of each machine (whose disk may be its own), then in the
    rest, which find the folder written. When a writer fails (it prints the one-line error), the others end with
    status 2 and nothing more to say. One process alone just writes."""
    import sys

    if launched_processes() < 2:
        write()
        return
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # as the training's Accelerator will ask
    turn = 0 if state.is_main_process else 1 if state.is_local_main_process else 2
    for now in range(3):
        if now == turn:
            write()
        try:
            state.wait_for_everyone()
        except RuntimeError:  # a writer's process ended: its error line is the report
            sys.exit(2)


def run_pretraining(data_dir, output_dir, *, model_options: dict, training_options: dict,
                    init_from: str | None = None, network: GeneRegulatoryNetwork | None = None,
                    regulation: GeneRegulatoryNetwork | None = None) -> dict:
    """Masked-expression pretraining on `data_dir` (from `prepare_cells`). Writes the model folder to
    `output_dir/model` (its card carries the baseline table) and `output_dir/summary.json`, and returns the summary:
    the validation loss beside trivial predictors on the same masked validation values, in the loss's own units
    (`masked_expression_metrics`), the table and its verdict, and the prior's per-cell coverage. `network` replaces
    the data folder's prior (a wrong or partial prior, for experiments); with `regulation` (the known true network
    of simulated cells) the validation also scores the masked genes whose true regulators the cell shows."""
    training = TrainingConfig.from_dict({"output_dir": str(output_dir), **training_options})
    check_model_options(model_options)
    dataset, tokenizer, data_network, metadata = load_prepared(data_dir, streamed=True)
    network = data_network if network is None else network
    train_cells, sample = _training_cells(data_dir, dataset, tokenizer, training)
    torch.manual_seed(training.seed)
    if init_from:
        check_compatible(init_from, tokenizer)
        model = load_pretrained(ScGrnForMaskedExpressionModeling, init_from, **model_options)
    else:
        model = ScGrnForMaskedExpressionModeling(new_config(tokenizer, **model_options))
        attach_grn(model, network, tokenizer)
    coverage = log_prior_coverage(model, sample)
    collator = DataCollatorForMaskedExpression.from_config(model.config, training.mask_probability)
    statistics = gene_statistics(sample, model.config.vocab_size, model.config.value_encoding, model.config.n_bins)
    evaluation_set = dataset["validation"]
    eval_collator = DataCollatorForMaskedExpression.from_config(model.config, training.mask_probability, seed=training.seed)

    truth = None if regulation is None else _adjacency(regulation, tokenizer)

    def evaluate(unwrapped, accelerator):
        return masked_expression_metrics(unwrapped, evaluation_set, eval_collator, statistics, regulation=truth)

    result = train(model, train_cells, collator.pad, training, evaluate=evaluate, batch_transform=collator.mask,
                    project_name="pretrain",
                    extra_tracker_config={f"model/{k}": v for k, v in model.config.mask_description().items()})
    final = result.history["eval"][-1]
    table = masked_baseline_table(final)
    summary = {"final_step": result.final_step, "validation_loss": final["masked_loss"], "loss": final["loss_name"],
               "baselines": {name: entry["loss"] for name, entry in final["baselines"].items()},
               "beats_every_baseline": final["beats_every_baseline"], "validation": final, "baseline_table": table,
               "prior_coverage": coverage}
    if result.is_main_process:
        save_model_folder(result.model, tokenizer, network, Path(output_dir) / "model", evaluation=final,
                          training_data=_training_data_text(metadata, "masked-expression pretraining"),
                          baselines_markdown=table, prior_coverage=coverage)
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    return summary


def _training_cells(data_dir, dataset, tokenizer, training: TrainingConfig):
    """What pretraining reads, and the training cells the trivial baselines and coverage are computed on: the
    tokenized train split for both, or, for a folder streaming from SOMA, the stream and the folder's sample."""
    if "train" in dataset:
        return dataset["train"], dataset["train"]
    from .soma import SomaCellStream, training_cells

    cells, described = training_cells(data_dir)
    stream = SomaCellStream(cells, tokenizer, batch_size=training.per_device_batch_size, seed=training.seed,
                            max_length=described["max_length"], num_workers=training.dataloader_num_workers)
    logger.warning(f"streaming {len(cells)} training cells from SOMA experiment {cells.source.display_name()} "
                   f"({stream.units_per_epoch} batches of {stream.batch_size} per epoch, all processes together)")
    return stream, dataset["train_sample"]


def _adjacency(network: GeneRegulatoryNetwork, tokenizer) -> torch.Tensor:
    """`(vocab, vocab)` boolean regulator -> target matrix of `network` over the tokenizer's ids."""
    edges = network.to_vocab_edges(tokenizer)
    matrix = torch.zeros(len(tokenizer), len(tokenizer), dtype=torch.bool)
    matrix[edges[0], edges[1]] = True
    return matrix


ARCHITECTURE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                       "value_encoding", "n_bins", "pooling", "grn_direction", "grn_self_loops", "cls_attends_all",
                       "all_attend_cls", "isolated_genes", "grn_dense_last_layers", "grn_hops")


def architecture_of(folder: str) -> dict:
    """The architecture fields of a saved model's config (`ARCHITECTURE_FIELDS`), to train another model of the
    same shape from scratch: a like-for-like control for finetuning that model."""
    config = ScGrnConfig.from_pretrained(check_model_source(folder))
    return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}


def _labelled_classes(dataset, label_column: str) -> list[str]:
    if label_column not in dataset["train"].column_names:
        raise ValueError(f"the dataset has no label column {label_column!r}; columns are "
                         f"{dataset['train'].column_names}. Tokenize with --label_column {label_column}.")
    classes = sorted(set(dataset["train"][label_column]))
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} has a single class in the training split.")
    unseen = sorted(set(dataset["test"][label_column]) - set(classes))
    if unseen:
        raise ValueError(f"test labels {unseen} never occur in training; re-split or drop those cells.")
    return classes


def _classifier(classes, tokenizer, network, pretrained: str | None, model_options: dict):
    id2label = dict(enumerate(classes))
    labels = dict(num_labels=len(classes), id2label=id2label, label2id={c: i for i, c in id2label.items()})
    if pretrained:
        check_compatible(pretrained, tokenizer)
        return load_pretrained(ScGrnForCellClassification, pretrained, **labels, **model_options)
    model = ScGrnForCellClassification(new_config(tokenizer, **labels, **model_options))
    c = model.config
    logger.warning(f"training from scratch: hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
                   f"{c.num_attention_heads} heads, {c.value_encoding} values, grn_mode {c.grn_mode}.")
    attach_grn(model, network, tokenizer)
    return model


def labelled_subset(split, label_column: str, per_class: int, seed: int = 0):
    """At most `per_class` cells of each label of a tokenized split, drawn with `seed`, in their original order."""
    labels = np.asarray(split[label_column]).astype(str)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(labels == label))[:per_class]
                           for label in np.unique(labels)])
    return split.select(np.sort(keep))


def log_prior_coverage(model, dataset) -> dict | None:
    """What the model's mask reaches in the training cells (`prior_coverage` of its own edges, so controls are
    measured as used), logged as one line; None for a dense model."""
    if model.config.grn_mode == "dense":
        return None
    encoder = model.base_model
    coverage = prior_coverage(dataset["input_ids"], encoder.grn_edges.cpu(), model.config.vocab_size,
                              encoder.special_token_ids)
    logger.warning(f"{model.config.grn_mode} mask, " + coverage_line(coverage))
    return coverage


def run_finetuning(data_dir, output_dir, *, label_column: str, pretrained: str | None, model_options: dict,
                   training_options: dict, save_outputs: bool = True, baselines: dict | None = None,
                   labels_per_class: int | None = None, network: GeneRegulatoryNetwork | None = None) -> dict:
    """Cell-type finetuning on `data_dir` from a pretrained folder (or from scratch when `pretrained` is None: pass
    `architecture_of(folder)` in `model_options` to compare like-for-like); early stopping on validation
    macro-F1; held-out evaluation beside scikit-learn baselines on the same cells (`classification_baselines`),
    with embedding metrics of the test cells and the prior's per-cell coverage. `save_outputs` writes
    `metrics.json` (`{"scgrn": ..., "baselines": ...}`), the model folder (its card carries the same table) and
    the PNGs (confusion matrix, UMAP of test embeddings). `baselines` takes them already computed on the same
    data folder (a comparison fits them once for all its runs). `labels_per_class` keeps that many training cells of
    each type (seeded; validation and test unchanged): finetuning with few labels. `network` replaces the data
    folder's prior for a model trained from scratch."""
    training = TrainingConfig.from_dict({"output_dir": str(output_dir), **training_options})
    check_model_options(model_options)
    dataset, tokenizer, data_network, metadata = load_prepared(data_dir)
    network = data_network if network is None else network
    classes = _labelled_classes(dataset, label_column)
    if labels_per_class is not None:
        dataset["train"] = labelled_subset(dataset["train"], label_column, labels_per_class, training.seed)
    torch.manual_seed(training.seed)
    model = _classifier(classes, tokenizer, network, pretrained, model_options)
    coverage = log_prior_coverage(model, dataset["train"])
    if training.freeze_encoder:
        for parameter in model.scgrn.parameters():
            parameter.requires_grad_(False)
    label2id = model.config.label2id
    plain_collator = DataCollatorForCellClassification(model.config.pad_token_id, label2id, label_column)
    collator = plain_collator
    if training.class_weighting:
        counts = np.bincount([label2id[c] for c in dataset["train"][label_column]], minlength=len(classes))
        weights = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
        collator = WithClassWeights(plain_collator, weights)

    def evaluate(unwrapped, accelerator):
        scores = classification_metrics(unwrapped, dataset["validation"], plain_collator)
        return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}

    result = train(model, dataset["train"], collator, training, evaluate=evaluate, metric_for_best="macro_f1",
                   project_name="finetune")
    test = classification_metrics(result.model, dataset["test"], plain_collator)
    if baselines is None:
        baselines = classification_baselines(dataset["train"], dataset["test"], label_column,
                                             model.config.vocab_size, seed=training.seed)
    evaluation = _finetuning_evaluation(result, test, dataset, baselines, training.seed)
    evaluation["prior_coverage"] = coverage
    if result.is_main_process and save_outputs:
        _save_finetuning(result.model, tokenizer, network, Path(output_dir), evaluation, test, classes, metadata,
                         label_column, training.seed)
    return evaluation


def _finetuning_evaluation(result, test: dict, dataset, baselines: dict, seed: int) -> dict:
    majority = baselines["majority_class"]
    return {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "majority_class_accuracy": majority["accuracy"],
        "majority_class_macro_f1": majority["macro_f1"],
        **{f"{name}_accuracy": entry["accuracy"] for name, entry in baselines.items() if name != "majority_class"},
        "test_cells": len(dataset["test"]),
        "best_validation_macro_f1": max(e["macro_f1"] for e in result.history["eval"]),
        "steps": result.final_step,
        "grn_mode": result.model.config.grn_mode,
        **{f"test_{k}": v for k, v in embedding_metrics(test["embeddings"], test["true_labels"], seed=seed).items()},
        "per_class": test["per_class"],
        "confusion_matrix": test["confusion_matrix"],
        "baselines": baselines,
        "baseline_table": classification_table(test, baselines),
    }


def _save_finetuning(model, tokenizer, network, output_dir: Path, evaluation: dict, test: dict, classes: list,
                     metadata: dict, label_column: str, seed: int) -> None:
    scgrn = {k: test[k] for k in ("accuracy", "macro_f1", "per_class")}
    metrics = {"scgrn": scgrn, "baselines": evaluation["baselines"], "prior_coverage": evaluation["prior_coverage"]}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=jsonable))
    save_model_folder(model, tokenizer, network, output_dir / "model", evaluation=evaluation,
                      training_data=_training_data_text(metadata, f"cell-type finetuning on `{label_column}`"),
                      baselines_markdown=evaluation["baseline_table"], prior_coverage=evaluation["prior_coverage"])
    plot_confusion_matrix(test["confusion_matrix"], classes, output_dir / "confusion_matrix.png")
    plot_umap(test["embeddings"], test["true_labels"], output_dir / "umap_test_cells.png",
              title=f"held-out cells, {model.config.grn_mode} mask", seed=seed)


def _training_data_text(metadata: dict, task: str) -> str:
    split = metadata.get("split", {})
    sources = metadata.get("sources") or [{"name": Path(str(metadata.get("source", "?"))).name}]  # older datasets
    names = ", ".join(s["name"] + (f" (sha256 {s['sha256'][:16]})" if "sha256" in s else "") for s in sources)
    return (f"{task} on `{names}` ({metadata.get('cells', '?')} cells; split seed "
            f"{split.get('seed')}: {split.get('train')} train / {split.get('validation')} validation / "
            f"{split.get('test')} test cells).")


COMPARED_MODES = ("grn", "dense", "rewired", "random", "shuffled")


def _comparison_run(data_dir, folder: Path, mode: str, seed: int, label_column: str, model_options: dict,
                    training_options: dict, pretraining_options: dict | None, baselines: dict) -> dict:
    """One cell of the comparison: finetune `mode` from scratch, or pretrain it first when `pretraining_options`."""
    options = {**model_options, "grn_mode": mode, "grn_control_seed": int(seed)}
    training = {**training_options, "seed": int(seed), "report_to": "none"}
    pretrained = None
    if pretraining_options is not None:
        run_pretraining(data_dir, folder / "pretrain", model_options=options,
                        training_options={**pretraining_options, "seed": int(seed), "report_to": "none"})
        pretrained, options = str(folder / "pretrain" / "model"), {}
    evaluation = run_finetuning(data_dir, folder / "finetune", label_column=label_column, pretrained=pretrained,
                                model_options=options, training_options=training, save_outputs=False,
                                baselines=baselines)
    coverage = evaluation["prior_coverage"] or {}
    return {"grn_mode": mode, "arm": "pretrained" if pretrained else "scratch", "seed": int(seed),
            **{k: evaluation[k] for k in COMPARED_METRICS},
            "active_pairs_per_cell": coverage.get("mean_active_pairs_per_cell", float("nan")),
            "tokens_with_partner": coverage.get("mean_share_of_tokens_with_partner", float("nan")),
            "baselines": {k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in evaluation["baselines"].items()}}


def comparison_markdown(runs: list[dict], label_column: str) -> str:
    """Mean +/- sd over seeds per mask (and arm), with each mask's per-cell reach, then the baselines' rows on the
    same held-out cells."""
    import pandas as pd

    table = pd.DataFrame(runs)
    columns = [*COMPARED_METRICS, "active_pairs_per_cell", "tokens_with_partner"]
    summary = table.groupby(["grn_mode", "arm"], sort=False)[columns].agg(["mean", "std"])
    seeds = table["seed"].nunique()
    lines = [f"Finetuned on `{label_column}`, {seeds} seeds per mask; mean +/- sd over seeds. Active pairs and tokens "
             "with a partner are per training cell, for the edges each mask uses.", "",
             "| mask | arm | " + " | ".join(m.removeprefix("test_") for m in COMPARED_METRICS)
             + " | active pairs per cell | tokens with a partner |", "| --- | --- |" + " --- |" * (len(columns))]
    for mode, arm in summary.index:
        cells = [f"{summary.loc[(mode, arm), (m, 'mean')]:.3f} +/- {np.nan_to_num(summary.loc[(mode, arm), (m, 'std')]):.3f}"
                 for m in COMPARED_METRICS]
        active, share = summary.loc[(mode, arm), ("active_pairs_per_cell", "mean")], summary.loc[
            (mode, arm), ("tokens_with_partner", "mean")]
        reach = ["-", "-"] if np.isnan(active) else [f"{active:.1f}", f"{share:.1%}"]
        lines.append(f"| {mode} | {arm} | " + " | ".join(cells + reach) + " |")
    for name, entry in runs[0]["baselines"].items():
        lines.append(f"| {name} (baseline) | - | {entry['accuracy']:.3f} | {entry['macro_f1']:.3f} |"
                     + " - |" * (len(columns) - 2))
    return "\n".join(lines) + "\n"


def run_comparison(data_dir, output_dir, *, label_column: str, modes=COMPARED_MODES, seeds=(0, 1, 2),
                   model_options: dict | None = None, training_options: dict | None = None,
                   pretraining_options: dict | None = None) -> dict:
    """The prior-vs-control table on the user's data: the same architecture and budget finetuned with each mask
    mode over several seeds (the seed sets initialisation, data order and the controls' edges). `rewired` is the
    control matched to what cells see (degree-preserving, no real edge). With `pretraining_options` (a training
    section), a second arm pretrains each mask on the same cells first, then finetunes it: whether pretraining
    with the prior helps. Baselines (logistic regression, kNN, majority class) on the same held-out cells close the
    table.

    Writes `comparison.md`, `comparison.json` (every run) and `comparison.png` under `output_dir`; returns the runs
    and the markdown."""
    import pandas as pd

    model_options, training_options = dict(model_options or {}), dict(training_options or {})
    arms = [None] if pretraining_options is None else [None, pretraining_options]
    dataset, tokenizer, _, _ = load_prepared(data_dir)
    _labelled_classes(dataset, label_column)  # refuse a missing or single-class column before any run
    # the same held-out cells for every run: the baselines are fitted once
    baselines = classification_baselines(dataset["train"], dataset["test"], label_column, len(tokenizer))
    runs = [_comparison_run(data_dir, Path(output_dir) / f"{mode}_seed{seed}" / ("pretrained" if arm else "scratch"),
                            mode, seed, label_column, model_options, training_options, arm, baselines)
            for mode in modes for arm in arms for seed in seeds]
    markdown = comparison_markdown(runs, label_column)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "comparison.md").write_text(markdown)
    (output_dir / "comparison.json").write_text(json.dumps(runs, indent=2, default=jsonable))
    plot_comparison(pd.DataFrame(runs), output_dir / "comparison.png")
    return {"runs": runs, "markdown": markdown}
