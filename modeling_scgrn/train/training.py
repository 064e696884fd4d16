"""Training loops through Accelerate: masked-expression pretraining and cell-type finetuning.

One loop serves both tasks; `accelerator.prepare` is the only place distribution appears. Checkpoints go through
`accelerator.save_state` into a temporary folder that is renamed when complete, so a killed run never leaves a
corrupt checkpoint; `resume_from_checkpoint="latest"` continues the same run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..cells.collators import DEFAULT_MASK_PROBABILITY, check_view_spread
from ..evaluation.plots import plot_training_curves
from ..options.typed import checked_dataclass
from ..storage.folders import checkpoint_folders, jsonable, run_task, write_run_manifest


def _at_least(bound):
    return lambda value: value >= bound


def _above(bound):
    return lambda value: value > bound


def _no_limit(value) -> bool:
    return True


# each range is checked when a TrainingConfig is built, before any work: (option, low check, high check, in words)
TRAINING_RANGES = (
    ("seed", _at_least(0), _no_limit, "at least 0"),
    ("num_epochs", _above(0), _no_limit, "above 0"),
    ("max_steps", lambda v: v == -1 or v >= 1, _no_limit, "-1 (from num_epochs) or at least 1"),
    ("per_device_batch_size", _at_least(1), _no_limit, "at least 1"),
    ("gradient_accumulation_steps", _at_least(1), _no_limit, "at least 1"),
    ("learning_rate", _above(0), _no_limit, "above 0"),
    ("weight_decay", _at_least(0), _no_limit, "at least 0"),
    ("warmup_ratio", _at_least(0), lambda v: v < 1, "in [0, 1)"),
    ("min_learning_rate_ratio", _at_least(0), lambda v: v <= 1, "in [0, 1]"),
    ("max_grad_norm", _at_least(0), _no_limit, "at least 0 (0 turns clipping off)"),
    ("logging_steps", _at_least(1), _no_limit, "at least 1"),
    ("eval_steps", _at_least(0), _no_limit, "at least 0 (0: at the end of each epoch)"),
    ("checkpoint_steps", _at_least(0), _no_limit, "at least 0 (0: only at the end)"),
    ("keep_last_checkpoints", _at_least(1), _no_limit, "at least 1"),
    ("mask_probability", _above(0), lambda v: v < 1, "a share in (0, 1): some values hidden, some left to read"),
    ("view_gene_dropout", _at_least(0), lambda v: v < 1, "a share in [0, 1): 0 keeps every gene in both views"),
    ("view_dropout_spread", _at_least(0), lambda v: v < 1, "in [0, 1): 0 gives every view the same share"),
    ("view_depth_jitter", _at_least(0), _no_limit, "at least 0 (0: every view keeps the cell's values)"),
    ("early_stopping_patience", _at_least(0), _no_limit, "at least 0 (0 turns it off)"),
    ("layer_decay", _above(0), lambda v: v <= 1, "in (0, 1] (1 turns it off)"),
    ("gene_embedding_lr_ratio", _above(0), _no_limit, "above 0 (1: the gene embeddings learn at learning_rate)"),
    ("head_lr_ratio", _above(0), _no_limit, "above 0 (1: the classifier learns at learning_rate)"),
    ("gene_dropout", _at_least(0), lambda v: v < 1, "a share in [0, 1): 0 shows every gene at every step"),
    ("reinit_layers", _at_least(0), _no_limit, "at least 0 (0 keeps every pretrained layer)"),
    ("dataloader_num_workers", _at_least(0), _no_limit, "at least 0"),
)


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
    min_learning_rate_ratio: float = field(default=0.0, metadata={"help": "where the cosine decay ends, as a share "
                                                                          "of the peak learning rate (0: decay to 0)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm; 0 disables"})
    mixed_precision: str = field(default="auto", metadata={"help": "'no', 'bf16', 'fp16' or 'auto' (bf16 where the GPU has it)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations to save memory"})
    torch_compile: bool = field(default=False, metadata={"help": "compile the model with torch.compile"})
    deterministic: bool = field(default=False, metadata={"help": "deterministic kernels only (torch's "
                                                                 "use_deterministic_algorithms): bit-identical reruns "
                                                                 "and resumes on a GPU, at some cost in speed"})
    logging_steps: int = field(default=10, metadata={"help": "log metrics every N optimizer steps"})
    eval_steps: int = field(default=0, metadata={"help": "evaluate every N steps; 0 = at the end of each epoch"})
    checkpoint_steps: int = field(default=0, metadata={"help": "save a resumable checkpoint every N steps; 0 = only at the end"})
    keep_last_checkpoints: int = field(default=2, metadata={"help": "checkpoints kept on disk"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "a checkpoint folder or 'latest'"})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker(s): tensorboard, wandb, mlflow, or none"})
    mask_probability: float = field(default=DEFAULT_MASK_PROBABILITY, metadata={"help": "pretraining: share of gene values hidden"})
    view_gene_dropout: float = field(default=0.0, metadata={"help": "pretraining with a contrastive term or a "
                                                                    "gene-detection decoder: share of gene tokens "
                                                                    "each view of a cell leaves out"})
    view_dropout_spread: float = field(default=0.0, metadata={"help": "pretraining: each view's share of genes left "
                                                                      "out is drawn uniformly within this distance "
                                                                      "of view_gene_dropout (0: all the same)"})
    view_depth_jitter: float = field(default=0.0, metadata={"help": "pretraining: each view's values re-normalised "
                                                                    "to another total, log-uniform within "
                                                                    "exp(+/-this) of the cell's (0: none)"})
    view_complementary: bool = field(default=False, metadata={"help": "pretraining: the second view of each cell "
                                                                      "leaves out the genes the first shows (at "
                                                                      "view_gene_dropout 0.5: disjoint halves)"})
    class_weighting: bool = field(default=True, metadata={"help": "finetuning: inverse-frequency class weights"})
    early_stopping_patience: int = field(default=0, metadata={"help": "finetuning: evaluations without macro-F1 gain before stopping; 0 = off"})
    layer_decay: float = field(default=1.0, metadata={"help": "finetuning: layer-wise learning-rate decay; each "
                                                              "layer below the head learns this factor slower (1 = off)"})
    gene_embedding_lr_ratio: float = field(default=1.0, metadata={"help": "the gene embeddings' learning rate as a "
                                                                          "multiple of learning_rate (1: the same)"})
    head_lr_ratio: float = field(default=1.0, metadata={"help": "finetuning: the classifier's learning rate as a "
                                                                "multiple of learning_rate, so that a new head "
                                                                "learns fast while a pretrained encoder moves little "
                                                                "(1: the same)"})
    freeze_encoder: bool = field(default=False, metadata={"help": "finetuning: train the classifier only (linear probe)"})
    gene_dropout: float = field(default=0.0, metadata={"help": "finetuning: share of each training cell's gene tokens "
                                                               "left out at every step (an augmentation; evaluation "
                                                               "reads every gene)"})
    reinit_layers: int = field(default=0, metadata={"help": "finetuning from a pretrained model: re-initialise its "
                                                            "last N encoder layers before training"})
    dataloader_num_workers: int = field(default=0, metadata={"help": "worker processes of each DataLoader"})
    show_progress: bool = field(default=True, metadata={"help": "tqdm progress bar on the main process"})

    def __post_init__(self):
        for name, low, high, text in TRAINING_RANGES:
            value = getattr(self, name)
            if not low(value) or not high(value):
                raise ValueError(f"training option {name}={value!r} must be {text}.")
        check_view_spread(self.view_gene_dropout, self.view_dropout_spread)
        if self.mixed_precision not in ("no", "bf16", "fp16", "auto"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is not one of ['no', 'bf16', 'fp16', 'auto'].")

    @classmethod
    def from_dict(cls, values: dict, **overrides) -> "TrainingConfig":
        """Build from a mapping (a config file's `training` section), then `overrides` (e.g. `output_dir=`, a path
        or a string), refusing unknown keys and values of the wrong type."""
        values = {**values, **overrides}
        if isinstance(values.get("output_dir"), os.PathLike):
            values["output_dir"] = os.fspath(values["output_dir"])
        return checked_dataclass(cls, values, "training")


RUN_STATE_FILE = "scgrn_run_state.json"


class _RunState:
    """Step counters saved with each checkpoint as JSON (`RUN_STATE_FILE`), never pickled: Accelerate's own custom
    checkpoint objects are unpickled with `weights_only=False`, which would run code from a crafted checkpoint."""

    def __init__(self):
        self.step = 0
        self.best_metric = -math.inf
        self.evaluations_without_gain = 0
        self.stream: dict | None = None  # a streamed source's position (`SomaCellStream.state_dict`)
        self.identity: dict | None = None  # what the run trains: its weights' shapes and its cells (`run_identity`)

    def state_dict(self) -> dict:
        state = {"step": self.step, "best_metric": self.best_metric, "without_gain": self.evaluations_without_gain,
                 "identity": self.identity}
        return state if self.stream is None else {**state, "stream": self.stream}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.best_metric = float(state["best_metric"])
        self.evaluations_without_gain = int(state["without_gain"])
        self.stream = state.get("stream")
        self.identity = state.get("identity")

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


def run_identity(model, train_dataset) -> dict:
    """What a checkpoint can only be resumed into: the model's weight shapes and the training cells (their count,
    and the dataset's fingerprint where it has one)."""
    return {"weights": {name: list(p.shape) for name, p in model.state_dict().items()},
            "cells": len(train_dataset) if hasattr(train_dataset, "__len__") else None,
            "fingerprint": getattr(train_dataset, "_fingerprint", None)}


def check_same_run(saved: dict | None, current: dict, checkpoint: Path) -> None:
    """Refuse, before any weight is loaded, to resume a checkpoint into another architecture or onto other cells
    (a checkpoint written before identities were recorded is taken as it is)."""
    if not saved:
        return
    changed = [f"{name} {shape} -> {current['weights'].get(name)}" for name, shape in saved["weights"].items()
               if current["weights"].get(name) != shape]
    changed += [f"weight {name} is new" for name in current["weights"] if name not in saved["weights"]]
    if changed:
        raise ValueError(f"{checkpoint} was trained with another architecture ({'; '.join(changed[:3])}); resume "
                         "with the model options it was started with, or start a new output folder.")
    for key, what in (("cells", "training cells"), ("fingerprint", "training data")):
        if saved.get(key) is not None and current.get(key) is not None and saved[key] != current[key]:
            raise ValueError(f"{checkpoint} was trained on other {what} ({key} {saved[key]} -> {current[key]}); "
                             "resume with the data it was started with, or start a new output folder.")


def claim_run_folder(output_dir: Path, task: str, resuming: bool) -> None:
    """Mark `output_dir` as one `task` run (its manifest), so that two runs never share checkpoints: a fresh run
    refuses a folder that already holds checkpoints, and a resumed one refuses another task's folder."""
    if resuming:
        found = run_task(output_dir)
        if found not in (None, task):
            raise ValueError(f"{output_dir} holds a {found} run, not a {task} run: resume it with its own script, "
                             "or start this run in another output folder.")
        return
    if checkpoint_folders(output_dir / "checkpoints"):
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


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform has one, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _warn_single_thread(accelerator) -> None:
    """`accelerate launch` on a machine without a GPU sets OMP_NUM_THREADS=1 unless given `--cpu` or
    `--num_cpu_threads_per_process`, so one process computes on one core of many without a word (1.4x slower
    pretraining steps on 2 cores, measured on the quickstart). Say so, and how to use the cores."""
    cores = usable_cores()
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1 and torch.get_num_threads() == 1 < cores:
        warnings.warn(
            f"torch computes on 1 thread of the {cores} CPU cores (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; `accelerate launch` sets it to 1 on a machine without a "
            f"GPU): pass `accelerate launch --num_cpu_threads_per_process {cores}`, or run the script with python.",
            stacklevel=3,
        )


def layer_depth(name: str, num_layers: int) -> int:
    """How far a parameter sits from the output, for layer-wise learning-rate decay: 0 for the head and the final
    norm, `num_layers - i` for Transformer layer `i`, `num_layers + 1` for the embeddings."""
    parts = name.split(".")
    if "layers" in parts:
        return num_layers - int(parts[parts.index("layers") + 1])
    return num_layers + 1 if "embeddings" in parts else 0


def _optimizer(model, config: TrainingConfig):
    """AdamW without weight decay on norms, biases and embeddings; with `layer_decay < 1`, each parameter's learning
    rate is `learning_rate x layer_decay ** layer_depth` (BEiT/ELECTRA-style finetuning: the head learns fastest,
    the embeddings slowest); the gene embeddings' is also multiplied by `gene_embedding_lr_ratio`, and the
    classifier's by `head_lr_ratio`."""
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0)
    groups: dict[tuple, dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decayed = not (parameter.ndim < 2 or "norm" in name or "embeddings" in name)
        scale = config.layer_decay ** layer_depth(name, num_layers)  # 1 when off
        scale *= config.gene_embedding_lr_ratio if "gene_embeddings" in name.split(".") else 1.0
        scale *= config.head_lr_ratio if name.split(".")[0] == "classifier" else 1.0
        group = groups.setdefault((decayed, scale), {"params": [], "weight_decay": config.weight_decay if decayed
                                                     else 0.0, "lr": config.learning_rate * scale})
        group["params"].append(parameter)
    ordered = sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))  # decayed first, as always
    return torch.optim.AdamW([group for _, group in ordered], lr=config.learning_rate)


@dataclass
class TrainingResult:
    """What [`train`] returns: the trained model (unwrapped from Accelerate, best weights restored when a metric
    chose them), the history (`step`, `loss`, `eval` lists), the last optimizer step, and this process's place among the run's processes."""

    model: Any
    history: dict
    final_step: int
    is_main_process: bool = True
    process_index: int = 0
    num_processes: int = 1


@dataclass
class _Run:
    """The pieces of one training run, once Accelerate has prepared them."""

    accelerator: Any
    model: Any
    optimizer: Any
    loader: Any
    scheduler: Any
    config: TrainingConfig
    total_steps: int
    updates_per_epoch: int
    state: _RunState = field(default_factory=_RunState)
    history: dict = field(default_factory=lambda: {"step": [], "loss": [], "eval": []})
    best_state: dict | None = None
    stream: Any = None  # a source that shards itself across processes (`soma.SomaCellStream`); None: a Dataset

    @property
    def checkpoint_root(self) -> Path:
        return Path(self.config.output_dir) / "checkpoints"


def launched_processes() -> int:
    """The processes of this run (torchrun, accelerate launch), read before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _accelerator(config: TrainingConfig):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    output_dir = Path(config.output_dir)
    log_with = None if config.report_to in ("none", "", None) else config.report_to.split(",")
    # torchrun on machines without GPUs: run the processes on CPU with gloo (accelerate wants cpu=True for that)
    cpu_processes = launched_processes() > 1 and not torch.cuda.is_available()
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
    _warn_single_thread(accelerator)
    return accelerator


def _prepare(accelerator, model, train_dataset, collator, config: TrainingConfig) -> _Run:
    """The DataLoader, optimizer and schedule, through Accelerate. A stream that shards itself across processes
    (`soma.SomaCellStream`) keeps its own DataLoader: Accelerate would read every cell in every process, or
    dispatch them from the first; its batches are moved to the device in `_batches`. An epoch is one pass of all
    processes over the cells either way."""
    from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    if config.gradient_checkpointing:  # transformers renamed it activation checkpointing; the old name warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    if config.torch_compile:
        model = torch.compile(model)
    stream = train_dataset if isinstance(train_dataset, torch.utils.data.IterableDataset) else None
    if stream is None:
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
        batches_per_epoch = len(loader)
    else:
        loader, batches_per_epoch = stream.loader(collator, config.dataloader_num_workers), stream.units_per_epoch
    identity = run_identity(model, train_dataset)  # before Accelerate wraps the model (and renames its weights)
    optimizer = _optimizer(model, config)
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / accelerator.num_processes
                                         / config.gradient_accumulation_steps))
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.num_epochs * updates_per_epoch))
    warmup = int(config.warmup_ratio * total_steps)
    if config.min_learning_rate_ratio > 0:
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total_steps,
                                                                min_lr_rate=config.min_learning_rate_ratio)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    if stream is None:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    else:
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    run = _Run(accelerator, model, optimizer, loader, scheduler, config, total_steps, updates_per_epoch, stream=stream)
    run.state.identity = identity
    return run


def _start(run: _Run, project_name: str, extra_tracker_config: dict | None) -> Path | None:
    """Claim the output folder, resume from a checkpoint where asked, start the trackers. Returns the checkpoint
    resumed from, if any."""
    config, accelerator = run.config, run.accelerator
    resume_path = None
    if config.resume_from_checkpoint:
        latest = config.resume_from_checkpoint == "latest"
        resume_path = ((checkpoint_folders(run.checkpoint_root) or [None])[-1] if latest
                       else Path(config.resume_from_checkpoint))
        if resume_path is None or not resume_path.exists():
            raise ValueError(f"no checkpoint to resume from at {config.resume_from_checkpoint!r} ({run.checkpoint_root}).")
    if accelerator.is_main_process:
        claim_run_folder(Path(config.output_dir), project_name, resuming=resume_path is not None)
    accelerator.wait_for_everyone()
    identity = run.state.identity
    if resume_path is not None:
        run.state.load(resume_path)
        check_same_run(run.state.identity, identity, resume_path)
        run.state.identity = identity
        if run.stream is not None:
            if run.state.stream is None:
                raise ValueError(f"{resume_path} records no stream position: it was not written by a streamed run; "
                                 "resume it with the data it was trained on.")
            run.stream.load_state_dict(run.state.stream)
        accelerator.load_state(str(resume_path))
        accelerator.print(f"resumed from {resume_path} at step {run.state.step}")
    if accelerator.log_with:
        tracked = {k: v for k, v in dataclasses.asdict(config).items() if isinstance(v, (int, float, str, bool))}
        # users upload run folders: the logs name folders by their own name, never by the user's path
        for name in ("output_dir", "resume_from_checkpoint"):
            if tracked.get(name) not in (None, "latest"):
                tracked[name] = Path(tracked[name]).name
        tracked.update(extra_tracker_config or {})
        accelerator.init_trackers(project_name, config=tracked)
    return resume_path


def _save_checkpoint(run: _Run) -> None:
    """`accelerator.save_state` plus the JSON run state into a temporary folder, renamed when complete; keeps the
    last `keep_last_checkpoints`."""
    accelerator, root = run.accelerator, run.checkpoint_root
    final = root / f"step_{run.state.step:08d}"
    temporary = root / f".tmp_step_{run.state.step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if run.stream is not None:  # every process has consumed the same number of batches
            run.state.stream = run.stream.state_dict(run.state.step * run.config.gradient_accumulation_steps)
        run.state.save(temporary)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for old in checkpoint_folders(root)[: -run.config.keep_last_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _step(run: _Run, batch, window: torch.Tensor) -> None:
    """One forward/backward pass (an optimizer step once gradients are accumulated); adds the loss, batches,
    tokens and cells to `window`, on the device (no host sync on the hot path)."""
    accelerator, model = run.accelerator, run.model
    with accelerator.accumulate(model):
        loss = model(**batch).loss
        accelerator.backward(loss)
        if accelerator.sync_gradients and run.config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), run.config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad()
    # several masked views of one cell (`cell_index`, the contrastive term's) count as one cell
    rows = batch["input_ids"]
    cells = batch["cell_index"].max() + 1 if "cell_index" in batch else rows.new_tensor(len(rows))
    window += torch.stack([loss.detach().float(), window.new_tensor(1.0), batch["attention_mask"].sum().float(),
                           cells.float().to(window.device)])


def _log(run: _Run, window: torch.Tensor, elapsed: float, progress) -> None:
    stats = run.accelerator.reduce(window.clone(), reduction="sum").tolist()
    metrics = {
        "train/loss": stats[0] / stats[1],
        "train/learning_rate": run.scheduler.get_last_lr()[0],
        "train/tokens_per_s": stats[2] / elapsed,
        "train/cells_per_s": stats[3] / elapsed,
    }
    run.accelerator.log(metrics, step=run.state.step)
    run.history["step"].append(run.state.step)
    run.history["loss"].append(metrics["train/loss"])
    progress.set_postfix(loss=f"{metrics['train/loss']:.4f}")


def _evaluate(run: _Run, evaluate, metric_for_best: str | None) -> bool:
    """Evaluate, log, keep the best weights by `metric_for_best`; returns True when early stopping says stop."""
    accelerator, state, model = run.accelerator, run.state, run.model
    model.eval()
    with torch.no_grad():
        scores = evaluate(accelerator.unwrap_model(model), accelerator)
    model.train()
    accelerator.log({f"eval/{k}": v for k, v in scores.items() if isinstance(v, (int, float))}, step=state.step)
    run.history["eval"].append({"step": state.step, **scores})
    if not metric_for_best:
        return False
    if scores[metric_for_best] > state.best_metric:
        state.best_metric, state.evaluations_without_gain = scores[metric_for_best], 0
        run.best_state = {k: v.detach().clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
        return False
    state.evaluations_without_gain += 1
    patience = run.config.early_stopping_patience
    if patience and state.evaluations_without_gain >= patience:
        accelerator.print(f"early stopping at step {state.step}: no {metric_for_best} gain")
        return True
    return False


def _evaluates_now(run: _Run) -> bool:
    step, config = run.state.step, run.config
    if config.eval_steps:
        return step % config.eval_steps == 0 or step == run.total_steps
    return step % run.updates_per_epoch == 0 or step == run.total_steps


def _loop(run: _Run, resume_path, batch_transform, evaluate, metric_for_best, progress) -> int | None:
    """Epochs of optimizer steps until `total_steps` or early stopping; returns the last checkpointed step."""
    config, state = run.config, run.state
    window = torch.zeros(4, device=run.accelerator.device)  # loss sum, batches, tokens, cells since the last log
    window_start, last_saved_step = time.perf_counter(), None
    epoch = state.step // max(run.updates_per_epoch, 1)
    run.model.train()
    while state.step < run.total_steps:
        batches = _batches(run, epoch, resume_path is not None)
        resume_path = None
        for batch in batches:
            _step(run, batch_transform(batch) if batch_transform is not None else batch, window)
            if not run.accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            if state.step % config.logging_steps == 0 or state.step == run.total_steps:
                _log(run, window, time.perf_counter() - window_start, progress)
                window.zero_()
                window_start = time.perf_counter()
            stop = evaluate is not None and _evaluates_now(run) and _evaluate(run, evaluate, metric_for_best)
            if config.checkpoint_steps and state.step % config.checkpoint_steps == 0:
                _save_checkpoint(run)
                last_saved_step = state.step
            if stop:
                return last_saved_step
            if state.step >= run.total_steps:
                break
        epoch += 1
    return last_saved_step


def _batches(run: _Run, epoch: int, resuming: bool):
    """The batches of one epoch (for a Dataset, from where a resumed run stopped), or a stream's endless batches
    from its position, on the device."""
    config, state = run.config, run.state
    if run.stream is not None:
        if not resuming:
            run.stream.position = state.step * config.gradient_accumulation_steps
        device = run.accelerator.device
        return ({k: v.to(device) for k, v in batch.items()} for batch in run.loader)
    run.loader.set_epoch(epoch)  # the seedable sampler shuffles by (seed, epoch): a resumed run sees the same order
    skip = (state.step % run.updates_per_epoch) * config.gradient_accumulation_steps if resuming else 0
    return run.accelerator.skip_first_batches(run.loader, skip) if skip else run.loader


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
) -> TrainingResult:
    """Train `model` on `train_dataset` (a `datasets.Dataset`, or a stream that shards itself across processes:
    `soma.SomaCellStream`) batched by `collator`.

    `batch_transform(batch) -> batch` runs on each batch right before its step (random masking belongs there:
    see `DataCollatorForMaskedExpression`). `evaluate(model, accelerator) -> dict` runs at each evaluation point;
    when `metric_for_best` names one of its keys, the best weights are restored at the end and
    `early_stopping_patience` applies. The output folder is claimed for `project_name` (a fresh run refuses one
    holding another run's checkpoints). Returns a [`TrainingResult`].
    """
    with deterministic_kernels(config.deterministic):
        accelerator = _accelerator(config)
        run = _prepare(accelerator, model, train_dataset, collator, config)
        resume_path = _start(run, project_name, extra_tracker_config)
        progress = tqdm(
            total=run.total_steps, initial=run.state.step, desc=project_name,
            mininterval=0.1 if _interactive() else 5.0,
            disable=not (config.show_progress and accelerator.is_local_main_process),
        )
        last_saved_step = _loop(run, resume_path, batch_transform, evaluate, metric_for_best, progress)
        progress.close()
        if last_saved_step != run.state.step:  # the final state, unless the last step was just checkpointed
            _save_checkpoint(run)
        unwrapped = accelerator.unwrap_model(run.model)
        if run.best_state is not None:
            unwrapped.load_state_dict(run.best_state)
        _release_before_teardown(run)
        accelerator.end_training()
        if accelerator.is_main_process:
            output_dir = Path(config.output_dir)
            plot_training_curves(run.history, output_dir / "training_curves.png")
            (output_dir / "history.json").write_text(json.dumps(run.history, indent=2, default=jsonable))
        return TrainingResult(unwrapped, run.history, run.state.step, accelerator.is_main_process,
                              accelerator.process_index, accelerator.num_processes)


def _release_before_teardown(run: _Run) -> None:
    """Drop the prepared objects and wait for every process, so that `end_training` destroys the process group
    while all peers are still there. DDP's reducer holds the group: freed only when `train` returned, after a peer
    had exited, gloo's destructor once waited forever (`~ProcessGroupGloo` from the reducer's release, torchrun)."""
    run.model = run.optimizer = run.loader = run.scheduler = None
    run.accelerator.free_memory()
    run.accelerator.wait_for_everyone()


@contextlib.contextmanager
def deterministic_kernels(enabled: bool):
    """torch's deterministic algorithms while a run lasts (`training.deterministic`), the previous setting restored
    after; cuBLAS's workspace setting too, which it reads when its first handle is made. Off: nothing changes."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def _interactive() -> bool:
    import sys

    return sys.stderr.isatty()


# ---------------------------------------------------------------------------------------------- evaluation


