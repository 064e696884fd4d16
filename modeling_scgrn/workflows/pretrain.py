"""Pretraining run: a masked-expression model on a prepared data folder (or a SOMA stream), evaluated beside its
trivial predictors and written as a complete model folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from ..cells.collators import DataCollatorForMaskedExpression
from ..cells.prepared import load_prepared
from ..evaluation.baselines import classification_baselines, masked_baseline_table
from ..evaluation.metrics import detection_metrics, gene_statistics, masked_expression_metrics
from ..evaluation.probe import embedding_probe, probe_split, probe_table
from ..grn.attach import adjacency, attach_grn, check_model_options, new_config
from ..grn.coverage import coverage_line, prior_coverage
from ..grn.network import GeneRegulatoryNetwork
from ..hub.model_folder import check_compatible, load_pretrained, save_model_folder
from ..model.modeling_scgrn import ScGrnForMaskedExpressionModeling
from ..storage.folders import jsonable
from ..train.training import TrainingConfig, train
from .data import prepared_data

logger = logging.getLogger(__name__)


def run_pretraining(data, training: TrainingConfig, *, model_options: Mapping | None = None,
                    init_from: str | None = None, network: GeneRegulatoryNetwork | None = None,
                    regulation: GeneRegulatoryNetwork | None = None) -> dict:
    """Masked-expression pretraining on `data`, a data folder (from `prepare_cells`) or a `CellSource` (cells
    tokenized into `output_dir/data` first; a resumed run keeps that folder), with `training` (its `output_dir` is the
    run's folder) and `model_options` (`ScGrnConfig` fields; the vocabulary and prior come from the data folder).
    Writes the model folder to `output_dir/model` (its card carries the baseline table) and
    `output_dir/summary.json`, and returns the summary:
    the validation loss beside trivial predictors on the same masked validation values, in the loss's own units
    (`masked_expression_metrics`), the table and its verdict, and the prior's per-cell coverage. `network` replaces
    the data folder's prior (a wrong or partial prior, for experiments); with `regulation` (the known true network
    of simulated cells) the validation also scores the masked genes whose true regulators the cell shows."""
    model_options, output_dir = dict(model_options or {}), training.output_dir
    check_model_options(model_options)
    finetuning_only = [f"{k}={getattr(training, k)}" for k in ("gene_dropout", "reinit_layers") if getattr(training, k)]
    if finetuning_only:
        raise ValueError(f"{', '.join(finetuning_only)}: finetuning options, which pretraining does not read; drop "
                         "them (a contrastive term's views leave genes out with view_gene_dropout).")
    data_dir = prepared_data(data, output_dir, resuming=bool(training.resume_from_checkpoint), model=init_from)
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
    _check_views(model.config, training)
    coverage = log_prior_coverage(model, sample)
    collator = DataCollatorForMaskedExpression.from_config(model.config, training.mask_probability,
                                                           view_gene_dropout=training.view_gene_dropout,
                                                           view_dropout_spread=training.view_dropout_spread,
                                                           view_depth_jitter=training.view_depth_jitter,
                                                           view_complementary=training.view_complementary)
    statistics = gene_statistics(sample, model.config.vocab_size, model.config.value_encoding, model.config.n_bins)
    if model.config.uses_gene_means and not init_from:
        model.set_gene_means(statistics["means"])
    detection = model.gene_detection_decoder
    if detection is not None and not bool(detection.gene_detection.any()):  # a start without a panel
        detection.set_panel(statistics["detection"], statistics["mean_log_genes"])
    evaluation_set = dataset["validation"]
    eval_collator = DataCollatorForMaskedExpression.from_config(model.config, training.mask_probability,
                                                                seed=training.seed, views=1)

    truth = None if regulation is None else adjacency(regulation, tokenizer)
    probe = _probe_setup(sample, evaluation_set, metadata, model.config.vocab_size, training.seed)
    detection = _detection_setup(model.config, evaluation_set, training, statistics)

    def evaluate(unwrapped, accelerator):
        scores = masked_expression_metrics(unwrapped, evaluation_set, eval_collator, statistics, regulation=truth)
        return {**scores, **probe(unwrapped), **detection(unwrapped)}

    result = train(model, train_cells, collator.pad, training, evaluate=evaluate, batch_transform=collator.mask,
                    project_name="pretrain",
                    extra_tracker_config={f"model/{k}": v for k, v in model.config.mask_description().items()})
    final = result.history["eval"][-1]
    table = masked_baseline_table(final)
    if final.get("probe"):
        table += "\n" + probe_table(final["probe"], metadata["split"]["label_column"])
    summary = {"final_step": result.final_step, "validation_loss": final["masked_loss"], "loss": final["loss_name"],
               "baselines": {name: entry["loss"] for name, entry in final["baselines"].items()},
               "beats_every_baseline": final["beats_every_baseline"], "validation": final, "baseline_table": table,
               "prior_coverage": coverage, "probe": final.get("probe")}
    if result.is_main_process:
        save_model_folder(result.model, tokenizer, network, Path(output_dir) / "model", evaluation=final,
                          training_data=training_data_text(metadata, "masked-expression pretraining"),
                          baselines_markdown=table, prior_coverage=coverage)
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=jsonable))
    return summary


def _check_views(config, training: TrainingConfig) -> None:
    """View options need a term that reads views: a contrastive term, or (gene dropout only) a gene-detection
    decoder, which in turn needs genes left out to find."""
    view_options = [f"{k}={getattr(training, k)}" for k in ("view_gene_dropout", "view_depth_jitter",
                                                            "view_complementary") if getattr(training, k)]
    if config.detection_weight > 0 and not training.view_gene_dropout > 0:
        raise ValueError(f"detection_weight={config.detection_weight} asks the model for the genes its input leaves "
                         "out, but view_gene_dropout=0 leaves none out; set training.view_gene_dropout (e.g. 0.5).")
    if config.detection_weight > 0 and not config.contrastive_weight > 0:
        view_options = [option for option in view_options if not option.startswith("view_gene_dropout")]
    if view_options and not config.contrastive_weight > 0:
        raise ValueError(f"{', '.join(view_options)} shapes the contrastive term's views, but the model has none; "
                         "give it model.contrastive_weight > 0, or set those to 0.")


def _detection_setup(config, validation, training: TrainingConfig, statistics: dict):
    """What each evaluation adds about a gene-detection decoder (`detection_metrics` on the validation cells,
    genes left out as in training, seeded, beside the trivial predictors of the training cells' `statistics`);
    nothing for a model without one."""
    if not config.detection_weight > 0:
        return lambda model: {}
    collator = DataCollatorForMaskedExpression.from_config(config, training.mask_probability, seed=training.seed,
                                                           views=1, view_gene_dropout=training.view_gene_dropout)
    return lambda model: detection_metrics(model, validation, collator, statistics)


PROBE_CELLS = 2000  # training cells the embedding probe is fitted on (a seeded sample of larger splits)


def _probe_setup(sample, validation, metadata: dict, vocab_size: int, seed: int):
    """What each evaluation adds about the pooled cell embedding: with a label column in the data, a linear probe of
    the frozen embedding on the validation cells beside logistic regression and PCA + logistic regression on the raw
    values (fitted once, on the same cells) and the embedding's depth R^2 (`evaluation.probe`); else nothing. The
    flat `probe_*` numbers are what the trackers log."""
    label_column = (metadata.get("split") or {}).get("label_column")
    if not label_column or label_column not in sample.column_names or len(validation) < 2:
        return lambda model: {}
    train = probe_split(sample, PROBE_CELLS, seed)
    baselines = classification_baselines(train, validation, label_column, vocab_size, seed=seed)

    def probe(model) -> dict:
        found = embedding_probe(model, train, validation, label_column, baselines=baselines, seed=seed)
        flat = {"probe_accuracy": found["accuracy"], "probe_macro_f1": found["macro_f1"],
                **{f"probe_depth_r2_{name}": value for name, value in found["depth_r2"].items()},
                **{f"probe_baseline_{name}_accuracy": e["accuracy"] for name, e in found["baselines"].items()}}
        return {"probe": found, **flat}

    return probe


def _training_cells(data_dir, dataset, tokenizer, training: TrainingConfig):
    """What pretraining reads, and the training cells the trivial baselines and coverage are computed on: the
    tokenized train split for both, or, for a folder streaming from SOMA, the stream and the folder's sample."""
    if "train" in dataset:
        return dataset["train"], dataset["train"]
    from ..cells.soma import SomaCellStream, training_cells

    cells, described = training_cells(data_dir)
    stream = SomaCellStream(cells, tokenizer, batch_size=training.per_device_batch_size, seed=training.seed,
                            max_length=described["max_length"], num_workers=training.dataloader_num_workers)
    logger.warning(f"streaming {len(cells)} training cells from SOMA experiment {cells.source.display_name()} "
                   f"({stream.units_per_epoch} batches of {stream.batch_size} per epoch, all processes together)")
    return stream, dataset["train_sample"]


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


def training_data_text(metadata: dict, task: str) -> str:
    split = metadata.get("split", {})
    sources = metadata.get("sources") or [{"name": Path(str(metadata.get("source", "?"))).name}]  # older datasets
    names = ", ".join(s["name"] + (f" (sha256 {s['sha256'][:16]})" if "sha256" in s else "") for s in sources)
    return (f"{task} on `{names}` ({metadata.get('cells', '?')} cells; split seed "
            f"{split.get('seed')}: {split.get('train')} train / {split.get('validation')} validation / "
            f"{split.get('test')} test cells).")
