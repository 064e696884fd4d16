"""Training loops through Accelerate: masked-expression pretraining and cell-type finetuning.

One loop serves both tasks; `accelerator.prepare` is the only place distribution appears. Checkpoints go through
`accelerator.save_state` into a temporary folder that is renamed when complete, so a killed run never leaves a
corrupt checkpoint; `resume_from_checkpoint="latest"` continues the same run.
"""

from __future__ import annotations

import importlib.util

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .folders import run_task, write_run_manifest

logger = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    """Every training hyperparameter, with its default. Scripts read it from YAML/JSON plus command-line overrides."""

    output_dir: str = field(default="runs/scgrn", metadata={"help": "folder for checkpoints, logs and the final model"})
    seed: int = field(default=0, metadata={"help": "seed of model init, data order and masking"})
    num_epochs: float = field(default=1.0, metadata={"help": "passes over the training cells (ignored if max_steps > 0)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps to run; -1 derives them from num_epochs"})
    per_device_batch_size: int = field(default=16, metadata={"help": "cells per device per forward pass"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "forward passes per optimizer step"})
    learning_rate: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on norms and biases)"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of steps with linear warm-up, then cosine decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables"})
    mixed_precision: str = field(default="auto", metadata={"help": "'no', 'bf16', 'fp16' or 'auto' (bf16 where the GPU has it)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory"})
    torch_compile: bool = field(default=False, metadata={"help": "compile the model with torch.compile"})
    logging_steps: int = field(default=10, metadata={"help": "log metrics every N optimizer steps"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps; 0 = at the end of each epoch"})
    checkpoint_steps: int = field(default=0, metadata={"help": "save a resumable checkpoint every N steps; 0 = only at the end"})
    keep_last_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder or 'latest'"})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, wandb, mlflow, or none"})
    mask_probability: float = field(default=0.15, metadata={"help": "pretraining: share of gene values hidden"})
    class_weighting: bool = field(default=True, metadata={"help": "finetuning: inverse-frequency class weights"})
    early_stopping_patience: int = field(default=0, metadata={"help": "finetuning: evaluations without macro-F1 gain before stopping; 0 = off"})
    freeze_encoder: bool = field(default=False, metadata={"help": "finetuning: train the classifier only (linear probe)"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "worker processes of each DataLoader"})
    show_progress: bool = field(default=True, metadata={"help": "tqdm progress bar on the main process"})

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        """Build from a mapping, refusing unknown keys and values of the wrong type."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known options are {sorted(known)}.")
        checked = {}
        for name, value in values.items():
            expected = known[name].type
            checked[name] = _coerce(name, value, expected)
        return cls(**checked)


def _coerce(name: str, value, expected: str):
    if value is None and "None" in expected:
        return None
    base = expected.split("|")[0].strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif base == "str":
        if isinstance(value, str):
            return value
    raise ValueError(f"training option {name!r} expects {expected}, got {value!r} ({type(value).__name__}).")


RUN_STATE_FILE = "scgrn_run_state.json"


class _RunState:
    """Step counters saved with each checkpoint as JSON (`RUN_STATE_FILE`), never pickled: Accelerate's own custom
    checkpoint objects are unpickled with `weights_only=False`, which would run code from a crafted checkpoint."""

    def __init__(self):
        self.step = 0
        self.best_metric = -math.inf
        self.evaluations_without_gain = 0

    def state_dict(self) -> dict:
        return {"step": self.step, "best_metric": self.best_metric, "without_gain": self.evaluations_without_gain}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.best_metric = float(state["best_metric"])
        self.evaluations_without_gain = int(state["without_gain"])

    def save(self, folder: Path) -> None:
        (folder / RUN_STATE_FILE).write_text(json.dumps(self.state_dict()))  # -inf is written as -Infinity

    def load(self, folder: Path) -> None:
        foreign = sorted(p.name for p in folder.glob("custom_checkpoint_*"))
        if foreign:
            raise ValueError(f"{folder} holds {', '.join(foreign)}, pickles that scgrn never writes and never loads "
                             "(unpickling can run code); delete them if you trust this checkpoint.")
        path = folder / RUN_STATE_FILE
        if not path.is_file():
            raise ValueError(f"{folder} is not an scgrn checkpoint ({RUN_STATE_FILE} is missing); resume from a "
                             "checkpoints/step_* folder that scgrn wrote.")
        self.load_state_dict(json.loads(path.read_text()))


def claim_run_folder(output_dir: Path, task: str, resuming: bool) -> None:
    """Mark `output_dir` as one `task` run (its manifest), so that two runs never share checkpoints: a fresh run
    refuses a folder that already holds checkpoints, and a resumed one refuses another task's folder."""
    if resuming:
        found = run_task(output_dir)
        if found not in (None, task):
            raise ValueError(f"{output_dir} holds a {found} run, not a {task} run: resume it with its own script, "
                             "or start this run in another output folder.")
        return
    if _checkpoints(output_dir / "checkpoints"):
        raise ValueError(f"{output_dir}/checkpoints holds an earlier run's checkpoints; resume that run "
                         "(resume_from_checkpoint='latest') or choose another output folder.")
    write_run_manifest(output_dir, task)


def _mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _warn_unapplied_sharding(accelerator) -> None:
    """Accelerate applies FSDP and DeepSpeed only on GPUs (and similar accelerators); on CPU processes it runs plain
    data parallel without a word. Say so, since the memory the user planned for is not what they get."""
    from accelerate.utils import DistributedType

    for variable, kind, name in (("ACCELERATE_USE_FSDP", DistributedType.FSDP, "FSDP"),
                                 ("ACCELERATE_USE_DEEPSPEED", DistributedType.DEEPSPEED, "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true" and accelerator.distributed_type != kind:
            warnings.warn(
                f"{name} was requested (accelerate config) but Accelerate runs this job as "
                f"{accelerator.distributed_type.value} on {accelerator.device}: it applies {name} only on GPUs, so "
                "every process holds the whole model (plain data parallel). Use a GPU machine for sharding.",
                stacklevel=3,
            )


def _checkpoints(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("step_*") if p.is_dir())


def _optimizer(model, config: TrainingConfig):
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or "norm" in name or "embeddings" in name else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def train(
    model,
    train_dataset,
    collator,
    config: TrainingConfig,
    *,
    evaluate=None,
    batch_transform=None,
    metric_for_best: str | None = None,
    project_name: str = "scgrn",
    extra_tracker_config: dict | None = None,
) -> dict[str, Any]:
    """Train `model` on `train_dataset` (a `datasets.Dataset`) batched by `collator`.

    `batch_transform(batch) -> batch` runs on each batch right before its step (random masking belongs there:
    see `DataCollatorForMaskedExpression`). `evaluate(model, accelerator) -> dict` runs at each evaluation point;
    when `metric_for_best` names one of its keys, the best weights are restored at the end and
    `early_stopping_patience` applies. Returns the history.
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
    from transformers import get_cosine_schedule_with_warmup

    output_dir = Path(config.output_dir)
    log_with = None if config.report_to in ("none", "", None) else config.report_to.split(",")
    # torchrun on machines without GPUs: run the processes on CPU with gloo (accelerate wants cpu=True for that)
    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(
        cpu=cpu_processes,
        mixed_precision=_mixed_precision(config.mixed_precision),
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=log_with,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    set_seed(config.seed, device_specific=True)  # ranks draw different masks and dropout; DDP syncs the weights
    _warn_unapplied_sharding(accelerator)
    if config.gradient_checkpointing:  # transformers renamed it activation checkpointing; the old name warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    if config.torch_compile:
        model = torch.compile(model)
    loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=config.per_device_batch_size,
        shuffle=True,
        collate_fn=collator,
        num_workers=config.dataloader_num_workers,
        # its own generator: starting an iterator then draws from it, not from the global RNG, so a resumed run
        # keeps the global random stream (masks, dropout) of the uninterrupted one
        generator=torch.Generator().manual_seed(config.seed),
    )
    optimizer = _optimizer(model, config)
    updates_per_epoch = math.ceil(len(loader) / accelerator.num_processes / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.num_epochs * updates_per_epoch))
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = _RunState()

    checkpoint_root = output_dir / "checkpoints"
    resume_path = None
    if config.resume_from_checkpoint:
        resume_path = (
            (_checkpoints(checkpoint_root) or [None])[-1]
            if config.resume_from_checkpoint == "latest"
            else Path(config.resume_from_checkpoint)
        )
        if resume_path is None or not resume_path.exists():
            raise ValueError(f"no checkpoint to resume from at {config.resume_from_checkpoint!r} ({checkpoint_root}).")
    if accelerator.is_main_process:
        claim_run_folder(output_dir, project_name, resuming=resume_path is not None)
    accelerator.wait_for_everyone()
    if resume_path is not None:
        state.load(resume_path)
        accelerator.load_state(str(resume_path))
        accelerator.print(f"resumed from {resume_path} at step {state.step}")
    if log_with:
        tracked = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
        tracked.update(extra_tracker_config or {})
        accelerator.init_trackers(project_name, config=tracked)

    def save_checkpoint():
        final = checkpoint_root / f"step_{state.step:08d}"
        temporary = checkpoint_root / f".tmp_step_{state.step:08d}"
        if accelerator.is_main_process:
            checkpoint_root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(temporary, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            state.save(temporary)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(temporary, final)
            for old in _checkpoints(checkpoint_root)[: -config.keep_last_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    history: dict[str, list] = {"step": [], "loss": [], "eval": []}
    best_state = None
    progress = tqdm(
        total=total_steps, initial=state.step, desc=project_name, mininterval=0.1 if _interactive() else 5.0,
        disable=not (config.show_progress and accelerator.is_local_main_process),
    )
    # loss sum, batches, tokens, cells since the last log, kept on the device: no host sync on the hot path
    window = torch.zeros(4, device=accelerator.device)
    window_start = time.perf_counter()
    last_saved_step = None
    stop = False
    epoch = state.step // max(updates_per_epoch, 1)
    model.train()
    while state.step < total_steps and not stop:
        loader.set_epoch(epoch)  # the seedable sampler shuffles by (seed, epoch): a resumed run sees the same order
        skip = (state.step % updates_per_epoch) * config.gradient_accumulation_steps if resume_path else 0
        epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
        resume_path = None
        for batch in epoch_loader:
            if batch_transform is not None:
                batch = batch_transform(batch)
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            window += torch.stack([
                loss.detach().float(),
                window.new_tensor(1.0),
                batch["attention_mask"].sum().float(),
                window.new_tensor(float(batch["input_ids"].shape[0])),
            ])
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            if state.step % config.logging_steps == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window_start
                stats = accelerator.reduce(window.clone(), reduction="sum").tolist()
                metrics = {
                    "train/loss": stats[0] / stats[1],
                    "train/learning_rate": scheduler.get_last_lr()[0],
                    "train/tokens_per_s": stats[2] / elapsed,
                    "train/cells_per_s": stats[3] / elapsed,
                }
                accelerator.log(metrics, step=state.step)
                history["step"].append(state.step)
                history["loss"].append(metrics["train/loss"])
                progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")
                window.zero_()
                window_start = time.perf_counter()
            at_epoch_end = state.step % updates_per_epoch == 0
            if evaluate is not None and (
                (config.eval_steps and state.step % config.eval_steps == 0)
                or (not config.eval_steps and at_epoch_end)
                or state.step == total_steps
            ):
                model.eval()
                with torch.no_grad():
                    scores = evaluate(accelerator.unwrap_model(model), accelerator)
                model.train()
                accelerator.log({f"eval/{k}": v for k, v in scores.items() if isinstance(v, (int, float))}, step=state.step)
                history["eval"].append({"step": state.step, **scores})
                if metric_for_best:
                    if scores[metric_for_best] > state.best_metric:
                        state.best_metric = scores[metric_for_best]
                        state.evaluations_without_gain = 0
                        best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
                    else:
                        state.evaluations_without_gain += 1
                        if config.early_stopping_patience and state.evaluations_without_gain >= config.early_stopping_patience:
                            accelerator.print(f"early stopping at step {state.step}: no {metric_for_best} gain")
                            stop = True
            if config.checkpoint_steps and state.step % config.checkpoint_steps == 0:
                save_checkpoint()
                last_saved_step = state.step
            if stop or state.step >= total_steps:
                break
        epoch += 1
    progress.close()
    if last_saved_step != state.step:  # the final state, unless the last step was just checkpointed
        save_checkpoint()
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    accelerator.end_training()
    if accelerator.is_main_process:
        plot_training_curves(history, output_dir / "training_curves.png")
        (output_dir / "history.json").write_text(json.dumps(history, indent=2, default=jsonable))
    history["final_step"] = state.step
    history["accelerator"] = accelerator
    return history


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


def jsonable(value):
    """`json.dumps(default=...)` for numpy scalars (and anything else, as text)."""
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def plot_training_curves(history: dict, path: Path) -> None:
    """PNG of the training loss and every numeric evaluation metric against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eval_keys = sorted({k for e in history["eval"] for k, v in e.items() if k != "step" and isinstance(v, (int, float))})
    fig, axes = plt.subplots(1, 1 + bool(eval_keys), figsize=(5 + 5 * bool(eval_keys), 4), squeeze=False)
    axes[0, 0].plot(history["step"], history["loss"], marker=".")
    axes[0, 0].set(xlabel="step", ylabel="training loss", title="training loss")
    if eval_keys:
        for key in eval_keys:
            axes[0, 1].plot([e["step"] for e in history["eval"]], [e.get(key) for e in history["eval"]], marker="o", label=key)
        axes[0, 1].set(xlabel="step", title="evaluation")
        axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- evaluation


def predict_batches(model, dataset, collator, batch_size: int = 64, device=None):
    """Yield (batch, model output) over a dataset, in order, without gradients."""
    device = device or next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            yield batch, model(**batch)


def masked_expression_metrics(model, dataset, collator, gene_means: torch.Tensor, batch_size: int = 64) -> dict:
    """Masked-value MSE of the model vs predicting each gene's training mean, and their Pearson r, on `dataset`.

    Values are compared in the model's own unit: expression bins (binned encoding: the expected bin under the
    predicted distribution) or log1p values (continuous). `gene_means` is `(vocab_size,)` in that unit."""
    predicted, truth, baseline, losses = [], [], [], []
    binned = model.config.value_encoding == "binned"
    for batch, output in predict_batches(model, dataset, collator, batch_size):
        labels = batch["labels"]
        scored = labels != -100 if binned else ~torch.isnan(labels)
        if binned:
            bins = torch.arange(output.logits.shape[-1], device=labels.device, dtype=torch.float32)
            expected = (output.logits.float().softmax(-1) * bins).sum(-1)
        else:
            expected = output.logits.float()
        predicted.append(expected[scored].cpu())
        truth.append(labels[scored].float().cpu())
        baseline.append(gene_means.to(labels.device)[batch["input_ids"][scored]].cpu())
        losses.append(float(output.loss))
    predicted, truth, baseline = torch.cat(predicted), torch.cat(truth), torch.cat(baseline)
    return {
        "masked_loss": float(np.mean(losses)),
        "masked_mse": float(((predicted - truth) ** 2).mean()),
        "gene_mean_mse": float(((baseline - truth) ** 2).mean()),
        "pearson_r": float(np.corrcoef(predicted.numpy(), truth.numpy())[0, 1]),
        "masked_values": int(truth.numel()),
    }


def gene_mean_values(dataset, vocab_size: int, value_encoding: str) -> torch.Tensor:
    """Per-gene mean of the encoded value over a tokenized dataset (the baseline of masked-value prediction)."""
    column = "expression_bins" if value_encoding == "binned" else "expression_values"
    sums = np.zeros(vocab_size)
    counts = np.zeros(vocab_size)
    for ids, values in zip(dataset["input_ids"], dataset[column]):
        ids, values = np.asarray(ids[1:]), np.asarray(values[1:], dtype=np.float64)
        np.add.at(sums, ids, values)
        np.add.at(counts, ids, 1)
    return torch.tensor(np.where(counts > 0, sums / np.maximum(counts, 1), sums.sum() / max(counts.sum(), 1)), dtype=torch.float32)


def classification_metrics(model, dataset, collator, batch_size: int = 64) -> dict:
    """Accuracy, macro-F1, per-class report and confusion matrix of a cell classifier on a labelled dataset."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    truth, predicted, embeddings = [], [], []
    for batch, output in predict_batches(model, dataset, collator, batch_size):
        truth.append(batch["labels"].cpu())
        predicted.append(output.logits.argmax(-1).cpu())
        embeddings.append(output.cell_embeddings.float().cpu())
    truth, predicted = torch.cat(truth).numpy(), torch.cat(predicted).numpy()
    labels = list(range(model.config.num_labels))
    names = [model.config.id2label[i] for i in labels]
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)),
        "per_class": classification_report(
            truth, predicted, labels=labels, target_names=names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        "embeddings": torch.cat(embeddings).numpy(),
        "true_labels": [names[i] for i in truth],
    }


def embedding_metrics(embeddings: np.ndarray, labels, *, seed: int = 0, resolution: float = 1.0) -> dict:
    """How well cell embeddings separate the labels: silhouette by label (cosine), and ARI/NMI between Leiden
    clusters of the embeddings' kNN graph (scanpy) and the labels; where scib-metrics is installed, also its
    rescaled label silhouette and k-means NMI/ARI (`scib_*`)."""
    import anndata
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

    labels = np.asarray(labels).astype(str)
    if len(np.unique(labels)) < 2 or len(labels) < 10:
        raise ValueError("embedding metrics need at least 10 cells of at least 2 labels.")
    adata = anndata.AnnData(np.zeros((len(labels), 1), dtype=np.float32))
    adata.obsm["X_scgrn"] = embeddings
    sc.pp.neighbors(adata, use_rep="X_scgrn", n_neighbors=min(15, len(labels) - 1), random_state=seed)
    sc.tl.leiden(adata, resolution=resolution, random_state=seed, flavor="igraph", n_iterations=2, directed=False)
    clusters = adata.obs["leiden"].astype(str).to_numpy()
    metrics = {
        "silhouette": float(silhouette_score(embeddings, labels, metric="cosine")),
        "leiden_ari": float(adjusted_rand_score(labels, clusters)),
        "leiden_nmi": float(normalized_mutual_info_score(labels, clusters)),
        "leiden_clusters": int(len(np.unique(clusters))),
    }
    if importlib.util.find_spec("scib_metrics") is None:  # optional: pip install "scgrn[scib]" (pulls jax)
        return metrics
    import scib_metrics

    embeddings = np.asarray(embeddings, dtype=np.float32)
    metrics["scib_silhouette_label"] = float(scib_metrics.silhouette_label(embeddings, labels))
    kmeans = scib_metrics.nmi_ari_cluster_labels_kmeans(embeddings, labels)
    metrics["scib_kmeans_nmi"], metrics["scib_kmeans_ari"] = float(kmeans["nmi"]), float(kmeans["ari"])
    return metrics


def plot_umap(embeddings: np.ndarray, labels, path, *, title: str = "cell embeddings", seed: int = 0) -> None:
    """PNG of a UMAP of the embeddings coloured by label (scanpy)."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import scanpy as sc

    adata = anndata.AnnData(np.zeros((len(labels), 1), dtype=np.float32))
    adata.obsm["X_scgrn"] = embeddings
    adata.obs["label"] = pd.Categorical(np.asarray(labels).astype(str))
    sc.pp.neighbors(adata, use_rep="X_scgrn", n_neighbors=min(15, len(labels) - 1), random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    fig, ax = plt.subplots(figsize=(6.5, 5))
    sc.pl.umap(adata, color="label", ax=ax, show=False, title=title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)

