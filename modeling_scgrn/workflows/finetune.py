"""Finetuning run: a cell-type classifier on a prepared data folder, from scratch or from a pretrained model, evaluated
beside logistic regression, kNN and the majority class on the same held-out cells, written as a complete model
folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..cells.collators import DataCollatorForCellClassification, GeneDropout, WithClassWeights
from ..cells.prepared import load_prepared
from ..evaluation.baselines import classification_baselines, classification_table
from ..evaluation.label_budget import labelled_indices
from ..evaluation.metrics import classification_metrics, embedding_metrics
from ..evaluation.plots import plot_confusion_matrix, plot_umap
from ..grn.attach import attach_grn, check_model_options, new_config
from ..grn.network import GeneRegulatoryNetwork
from ..hub.model_folder import (architecture_of, check_compatible, load_pretrained, save_model_folder,
                                 with_architecture_of)
from ..model.configuration_scgrn import SHAPE_FIELDS, ScGrnConfig
from ..model.modeling_scgrn import ScGrnForCellClassification
from ..storage.folders import jsonable
from ..train.training import TrainingConfig, train
from .data import prepared_data
from .pretrain import log_prior_coverage, training_data_text

logger = logging.getLogger(__name__)


def labelled_classes(dataset, label_column: str) -> list[str]:
    if label_column not in dataset["train"].column_names:
        raise ValueError(f"the dataset has no label column {label_column!r}; columns are "
                         f"{dataset['train'].column_names}. Tokenize with --label_column {label_column}.")
    present = set(dataset["train"][label_column])
    if "nan" in present or None in present:
        raise ValueError(f"label column {label_column!r} labels some cells 'nan' (a missing label, kept as a class "
                         "by an earlier scgrn); tokenize the cells again, which leaves unlabelled cells out.")
    classes = sorted(present)
    if len(classes) < 2:
        raise ValueError(f"label column {label_column!r} has a single class in the training split.")
    for name in ("validation", "test"):
        unseen = sorted(set(dataset[name][label_column]) - set(classes)) if name in dataset else []
        if unseen:
            raise ValueError(f"{name} labels {unseen} never occur in training; re-split or drop those cells.")
    return classes


def _classifier(classes, tokenizer, network, pretrained: str | None, model_options: dict):
    id2label = dict(enumerate(classes))
    labels = dict(num_labels=len(classes), id2label=id2label, label2id={c: i for i, c in id2label.items()})
    if pretrained:
        config = check_compatible(pretrained, tokenizer)
        other = {k: (getattr(config, k), v) for k, v in model_options.items() if k in SHAPE_FIELDS
                 and getattr(config, k) != v}
        if other:
            raise ValueError(f"the model options set {', '.join(f'{k}={v!r}' for k, (_, v) in other.items())} but "
                             f"{pretrained} has {', '.join(f'{k}={c!r}' for k, (c, _) in other.items())}; a "
                             "pretrained model keeps its architecture: drop those from the config's model section.")
        # from_pretrained sets the options on the saved config without ScGrnConfig's checks (a negative
        # classifier_mixup_alpha would silently turn mixup off): run them on the config the model will have
        ScGrnConfig.from_dict({**config.to_dict(), **model_options})
        return load_pretrained(ScGrnForCellClassification, pretrained, **labels, **model_options)
    model = ScGrnForCellClassification(new_config(tokenizer, **labels, **model_options))
    c = model.config
    logger.warning(f"training from scratch: hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
                   f"{c.num_attention_heads} heads, {c.value_encoding} values, grn_mode {c.grn_mode}.")
    attach_grn(model, network, tokenizer)
    return model


def check_recipe(training: TrainingConfig, pretrained: str | None) -> None:
    """Refuse finetuning options that could not do what they say, before any work."""
    if training.reinit_layers and not pretrained:
        raise ValueError(f"reinit_layers={training.reinit_layers} re-initialises layers of a pretrained model, but "
                         "this run trains from scratch, where every layer is new; give --model or drop it.")
    if training.reinit_layers and training.freeze_encoder:
        raise ValueError("reinit_layers with freeze_encoder would keep re-initialised layers random and frozen; "
                         "drop one of them.")
    layers = architecture_of(pretrained)["num_hidden_layers"] if training.reinit_layers else 0
    if training.reinit_layers > layers:
        raise ValueError(f"reinit_layers={training.reinit_layers} is more than the {layers} encoder layers of "
                         f"{pretrained}; at most {layers}.")


def reinitialize_last_layers(model, count: int) -> None:
    """Draw the last `count` encoder layers of `model` anew, with its own initialisation (the field's recipe for
    small data: the top layers of a pretrained encoder are the most specific to the pretraining task)."""
    layers = model.base_model.layers
    if count > len(layers):
        raise ValueError(f"reinit_layers={count} is more than the model's {len(layers)} encoder layers.")
    for layer in layers[len(layers) - count:]:
        for module in layer.modules():
            for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False)):
                tensor._is_hf_initialized = False  # transformers' init functions skip tensors a load marked
            model._init_weights(module)


def labelled_subset(split, label_column: str, per_class: int, seed: int = 0):
    """At most `per_class` cells of each label of a tokenized split, drawn with `seed`, in their original order
    (`labelled_indices`: a frozen embedding read with the same budget and seed gets the same cells)."""
    return split.select(labelled_indices(split[label_column], per_class, seed))


def run_finetuning(data, training: TrainingConfig, *, label_column: str, pretrained: str | None = None,
                   model_options: Mapping | None = None, architecture_from: str | None = None,
                   save_outputs: bool = True, baselines: dict | None = None, labels_per_class: int | None = None,
                   network: GeneRegulatoryNetwork | None = None) -> dict:
    """Cell-type finetuning on `data`, a data folder or a `CellSource` (tokenized into `output_dir/data` first, with
    the pretrained model's vocabulary), with `training` (its `output_dir` is the run's folder) from a pretrained
    folder (or from scratch when `pretrained` is None, with `model_options`, `ScGrnConfig` fields; with
    `architecture_from`, a model folder, its architecture under `model_options`: a like-for-like control); early
    stopping on validation macro-F1; held-out evaluation beside scikit-learn baselines on the same cells
    (`classification_baselines`), with embedding metrics of the test cells and the prior's per-cell coverage.
    `save_outputs` writes `metrics.json` (`{"scgrn": ..., "baselines": ...}`), the model folder (its card carries the
    same table) and the PNGs (confusion matrix, UMAP of test embeddings). `baselines` takes them already computed on
    the same data folder (a comparison fits them once for all its runs). `labels_per_class` keeps that many training
    cells of each type (seeded; validation and test unchanged): finetuning with few labels. `network` replaces the
    data folder's prior for a model trained from scratch."""
    model_options, output_dir = dict(model_options or {}), training.output_dir
    if architecture_from:
        if pretrained:
            raise ValueError("architecture_from (--architecture_from) trains from scratch; drop it or drop the "
                             "pretrained model (--model).")
        model_options = with_architecture_of(architecture_from, model_options)
    check_model_options(model_options)
    check_recipe(training, pretrained)
    data_dir = prepared_data(data, output_dir, resuming=bool(training.resume_from_checkpoint), model=pretrained)
    dataset, tokenizer, data_network, metadata = load_prepared(data_dir)
    network = data_network if network is None else network
    classes = labelled_classes(dataset, label_column)
    if labels_per_class is not None:
        dataset["train"] = labelled_subset(dataset["train"], label_column, labels_per_class, training.seed)
    torch.manual_seed(training.seed)
    model = _classifier(classes, tokenizer, network, pretrained, model_options)
    if training.reinit_layers:
        reinitialize_last_layers(model, training.reinit_layers)
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

    augment = GeneDropout(model.config.pad_token_id, training.gene_dropout) if training.gene_dropout else None
    result = train(model, dataset["train"], collator, training, evaluate=evaluate, metric_for_best="macro_f1",
                   batch_transform=augment, project_name="finetune")
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
        "train_cells": len(dataset["train"]),
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
                      training_data=training_data_text(metadata, f"cell-type finetuning on `{label_column}`"),
                      baselines_markdown=evaluation["baseline_table"], prior_coverage=evaluation["prior_coverage"])
    plot_confusion_matrix(test["confusion_matrix"], classes, output_dir / "confusion_matrix.png")
    plot_umap(test["embeddings"], test["true_labels"], output_dir / "umap_test_cells.png",
              title=f"held-out cells, {model.config.grn_mode} mask", seed=seed)
