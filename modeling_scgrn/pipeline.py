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
    classification_metrics,
    embedding_metrics,
    gene_mean_values,
    masked_expression_metrics,
    plot_comparison,
    plot_confusion_matrix,
    plot_umap,
)
from .folders import jsonable
from .hub import check_compatible, load_pretrained, save_model_folder
from .modeling_scgrn import ScGrnForCellClassification, ScGrnForMaskedExpressionModeling
from .networks import GeneRegulatoryNetwork
from .tokenization_scgrn import ScGrnTokenizer
from .training import TrainingConfig, train

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


def add_config_arguments(parser) -> None:
    """The options every training script shares: `--config FILE` and repeatable `--set section.option=value`."""
    parser.add_argument("--config", default=None, help="YAML/JSON file with `model` and `training` sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override one config value (repeatable)")


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


def run_data(data_dir, output_dir, *, cells=None, prior=None, resource: str = "collectri", resuming: bool = False,
             **options):
    """The tokenized data of a run: `data_dir` as given, or `cells` (.h5ad files or `pbmc68k_reduced`) tokenized
    with `prior` into `output_dir/data` first (a resumed run keeps the data it tokenized). `options` go to
    [`tokenize_files`]."""
    if cells is None:
        return data_dir
    folder = Path(output_dir) / "data"
    if not (resuming and (folder / "dataset").is_dir()):
        tokenize_files(cells, prior, folder, resource=resource, **options)
    return folder


def run_pretraining(data_dir, output_dir, *, model_options: dict, training_options: dict,
                    init_from: str | None = None) -> dict:
    """Masked-expression pretraining on `data_dir` (from `prepare_cells`). Writes the model folder to
    `output_dir/model` and returns the summary (masked-value loss of the model vs the per-gene-mean baseline)."""

    training = TrainingConfig.from_dict({"output_dir": str(output_dir), **training_options})
    check_model_options(model_options)
    dataset, tokenizer, network, metadata = load_prepared(data_dir)
    torch.manual_seed(training.seed)
    if init_from:
        check_compatible(init_from, tokenizer)
        model = load_pretrained(ScGrnForMaskedExpressionModeling, init_from, **model_options)
    else:
        model = ScGrnForMaskedExpressionModeling(new_config(tokenizer, **model_options))
        attach_grn(model, network, tokenizer)
    collator = DataCollatorForMaskedExpression.from_config(model.config, training.mask_probability)
    means = gene_mean_values(dataset["train"], model.config.vocab_size, model.config.value_encoding)
    evaluation_set = dataset["validation"]
    eval_collator = DataCollatorForMaskedExpression.from_config(model.config, training.mask_probability, seed=training.seed)

    def evaluate(unwrapped, accelerator):
        return masked_expression_metrics(unwrapped, evaluation_set, eval_collator, means)

    result = train(model, dataset["train"], collator.pad, training, evaluate=evaluate, batch_transform=collator.mask,
                    project_name="pretrain",
                    extra_tracker_config={f"model/{k}": v for k, v in model.config.mask_description().items()})
    final = result.history["eval"][-1]
    summary = {"final_step": result.final_step, "validation": final}
    if result.is_main_process:
        model = result.model
        save_model_folder(model, tokenizer, network, Path(output_dir) / "model", evaluation=final,
                          training_data=_training_data_text(metadata, "masked-expression pretraining"))
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    return summary


def run_finetuning(data_dir, output_dir, *, label_column: str, pretrained: str | None, model_options: dict,
                   training_options: dict, save_outputs: bool = True) -> dict:
    """Cell-type finetuning on `data_dir` from a pretrained folder (or from scratch when `pretrained` is None);
    early stopping on validation macro-F1; test-split evaluation against the majority-class baseline, with
    embedding metrics of the test cells. `save_outputs` writes the model folder and the PNGs (confusion
    matrix, UMAP of test embeddings)."""

    training = TrainingConfig.from_dict({"output_dir": str(output_dir), **training_options})
    check_model_options(model_options)
    dataset, tokenizer, network, metadata = load_prepared(data_dir)
    if label_column not in dataset["train"].column_names:
        raise ValueError(f"the dataset has no label column {label_column!r}; columns are "
                         f"{dataset['train'].column_names}. Tokenize with --label_column {label_column}.")
    classes = sorted(set(dataset["train"][label_column]))
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} has a single class in the training split.")
    unseen = sorted(set(dataset["test"][label_column]) - set(classes))
    if unseen:
        raise ValueError(f"test labels {unseen} never occur in training; re-split or drop those cells.")
    id2label = dict(enumerate(classes))
    label2id = {c: i for i, c in id2label.items()}
    torch.manual_seed(training.seed)
    if pretrained:
        check_compatible(pretrained, tokenizer)
        model = load_pretrained(ScGrnForCellClassification, pretrained, num_labels=len(classes), id2label=id2label,
                                label2id=label2id, **model_options)
    else:
        model = ScGrnForCellClassification(new_config(tokenizer, num_labels=len(classes), id2label=id2label,
                                                      label2id=label2id, **model_options))
        attach_grn(model, network, tokenizer)
    if training.freeze_encoder:
        for parameter in model.scgrn.parameters():
            parameter.requires_grad_(False)
    collator = DataCollatorForCellClassification(model.config.pad_token_id, label2id, label_column)
    if training.class_weighting:
        counts = np.bincount([label2id[c] for c in dataset["train"][label_column]], minlength=len(classes))
        weights = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32)
        collator = WithClassWeights(collator, weights)
    plain_collator = DataCollatorForCellClassification(model.config.pad_token_id, label2id, label_column)

    def evaluate(unwrapped, accelerator):
        scores = classification_metrics(unwrapped, dataset["validation"], plain_collator)
        return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}

    result = train(model, dataset["train"], collator, training, evaluate=evaluate, metric_for_best="macro_f1",
                    project_name="finetune")
    model = result.model
    test = classification_metrics(model, dataset["test"], plain_collator)
    model.eval()
    majority = max(set(dataset["train"][label_column]), key=dataset["train"][label_column].count)
    test_labels = dataset["test"][label_column]
    baseline_accuracy = sum(label == majority for label in test_labels) / len(test_labels)
    baseline_f1 = (1.0 / len(classes)) * (2 * baseline_accuracy / (1 + baseline_accuracy))
    evaluation = {
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "majority_class_accuracy": baseline_accuracy,
        "majority_class_macro_f1": baseline_f1,
        "test_cells": len(test_labels),
        "best_validation_macro_f1": max(e["macro_f1"] for e in result.history["eval"]),
        "steps": result.final_step,
        "grn_mode": model.config.grn_mode,
        **{f"test_{k}": v for k, v in embedding_metrics(test["embeddings"], test["true_labels"],
                                                         seed=training.seed).items()},
        "per_class": test["per_class"],
        "confusion_matrix": test["confusion_matrix"],
    }
    if result.is_main_process and save_outputs:
        save_model_folder(model, tokenizer, network, Path(output_dir) / "model", evaluation=evaluation,
                          training_data=_training_data_text(metadata, f"cell-type finetuning on `{label_column}`"))
        plot_confusion_matrix(test["confusion_matrix"], classes, Path(output_dir) / "confusion_matrix.png")
        plot_umap(test["embeddings"], test["true_labels"], Path(output_dir) / "umap_test_cells.png",
                  title=f"held-out cells, {model.config.grn_mode} mask", seed=training.seed)
    return evaluation


def _training_data_text(metadata: dict, task: str) -> str:
    split = metadata.get("split", {})
    sources = metadata.get("sources") or [{"name": Path(str(metadata.get("source", "?"))).name}]  # older datasets
    names = ", ".join(s["name"] + (f" (sha256 {s['sha256'][:16]})" if "sha256" in s else "") for s in sources)
    return (f"{task} on `{names}` ({metadata.get('cells', '?')} cells; split seed "
            f"{split.get('seed')}: {split.get('train')} train / {split.get('validation')} validation / "
            f"{split.get('test')} test cells).")


def run_comparison(data_dir, output_dir, *, label_column: str, modes=("grn", "dense", "random", "shuffled"),
                   seeds=(0, 1, 2), pretrained: str | None = None, model_options: dict | None = None,
                   training_options: dict | None = None) -> dict:
    """The prior-vs-control table on the user's data: the same architecture and budget finetuned with each mask
    mode over several seeds (the seed sets initialisation, data order and the random/shuffled control).

    Writes `comparison.md` (mean +/- sd per mode), `comparison.json` (every run) and `comparison.png` under
    `output_dir`; returns the runs and the summary."""
    import pandas as pd

    model_options = dict(model_options or {})
    if pretrained:
        raise ValueError("compare modes from scratch: a pretrained folder fixes its own mask (its grn_mode).")
    runs = []
    for mode in modes:
        for seed in seeds:
            options = {**model_options, "grn_mode": mode, "grn_control_seed": int(seed)}
            training = {**(training_options or {}), "seed": int(seed), "report_to": "none"}
            evaluation = run_finetuning(data_dir, Path(output_dir) / f"{mode}_seed{seed}", label_column=label_column,
                                        pretrained=None, model_options=options, training_options=training,
                                        save_outputs=False)
            runs.append({"grn_mode": mode, "seed": int(seed), **{k: evaluation[k] for k in COMPARED_METRICS},
                         "majority_class_accuracy": evaluation["majority_class_accuracy"]})
    table = pd.DataFrame(runs)
    summary = table.groupby("grn_mode", sort=False)[list(COMPARED_METRICS)].agg(["mean", "std"])
    lines = [
        f"Finetuned from scratch on `{label_column}`, {len(seeds)} seeds per mask "
        f"(majority-class accuracy {runs[0]['majority_class_accuracy']:.3f}); mean +/- sd over seeds.",
        "",
        "| mask | " + " | ".join(m.removeprefix("test_") for m in COMPARED_METRICS) + " |",
        "| --- |" + " --- |" * len(COMPARED_METRICS),
    ]
    for mode in summary.index:
        cells = [f"{summary.loc[mode, (m, 'mean')]:.3f} +/- {np.nan_to_num(summary.loc[mode, (m, 'std')]):.3f}"
                 for m in COMPARED_METRICS]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + "\n"
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "comparison.md").write_text(markdown)
    (output_dir / "comparison.json").write_text(json.dumps(runs, indent=2))
    plot_comparison(table, output_dir / "comparison.png")
    return {"runs": runs, "markdown": markdown}


