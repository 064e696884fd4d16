"""High-level steps the scripts chain together: build a model on a prior, pretrain, finetune, and write a complete,
Hub-ready model folder (weights, tokenizer, GRN files, reports, model card)."""

from __future__ import annotations

import json
import logging
import os
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import yaml

from .configuration_scgrn import ScGrnConfig
from .grn import GeneRegulatoryNetwork, plot_mask, prior_report
from .modeling_scgrn import ScGrnForCellClassification, ScGrnForMaskedExpressionModeling, ScGrnModel
from .tokenization_scgrn import ScGrnTokenizer
from .training import jsonable

logger = logging.getLogger(__name__)

MODEL_CLASSES = {
    "AutoModel": ScGrnModel,
    "AutoModelForMaskedLM": ScGrnForMaskedExpressionModeling,
    "AutoModelForSequenceClassification": ScGrnForCellClassification,
}


def attach_grn(model, network: GeneRegulatoryNetwork, tokenizer: ScGrnTokenizer) -> torch.Tensor:
    """Put `network`'s edges among the tokenizer's genes into the model (the control replaces them for
    `grn_mode="random"`/`"shuffled"`). Returns the stored `(2, E)` vocabulary-id edges."""
    return model.set_grn_edges(network.to_vocab_edges(tokenizer))


def load_yaml_or_json(path: str | os.PathLike) -> dict:
    text = Path(path).read_text()
    values = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values.")
    return values


def model_card(
    model,
    network: GeneRegulatoryNetwork | None,
    report: dict | None,
    *,
    repo_id: str = "org/scgrn",
    training_data: str = "Not recorded.",
    evaluation: dict | None = None,
    comparison_markdown: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
) -> str:
    """The model card text, rendered from `model_cards/scgrn.md` (the single template)."""
    config = model.config
    metadata = {
        "library_name": "transformers",
        "license": license,
        "tags": ["single-cell", "scRNA-seq", "gene-regulatory-network", "biology", "scgrn"],
        "pipeline_tag": "feature-extraction",
    }
    if datasets:
        metadata["datasets"] = datasets
    if evaluation and "accuracy" in evaluation:
        metadata["metrics"] = ["accuracy", "f1"]
    if network is not None and report is not None:
        p = network.provenance
        prior_section = (
            f"- Resource: {p.get('resource', 'custom')} ({p.get('version', 'version not recorded')}), organism "
            f"{p.get('organism', '?')}, identifiers {p.get('id_type', '?')}.\n"
            f"- Filters: {p.get('filters', 'none recorded')}; dropped: {json.dumps(p.get('dropped', {}))}.\n"
            f"- On this model's gene panel ({report['panel_genes']} genes): {report['edges_in_panel']} edges, "
            f"{report['regulators_in_panel']} regulators, {report['targets_in_panel']} targets, density "
            f"{report['density']:.2e} of ordered gene pairs, {report['isolated_gene_share']:.1%} of panel genes "
            "without any edge."
        )
    else:
        prior_section = "No prior attached (`grn_mode='dense'`)."
    mask_rows = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.mask_description().items())
    if evaluation:
        lines = ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in evaluation.items()
                  if isinstance(v, (int, float, str))]
        evaluation_text = "\n".join(lines)
    else:
        evaluation_text = "No evaluation recorded."
    if comparison_markdown:
        evaluation_text += "\n\nPrior versus sparsity-matched controls:\n\n" + comparison_markdown
    template = files("modeling_scgrn").joinpath("model_cards/scgrn.md").read_text()
    return template.format(
        metadata=yaml.safe_dump(metadata, sort_keys=False).strip(),
        title=f"scgrn: {repo_id}",
        training_data=training_data,
        prior_section=prior_section,
        mask_table=mask_rows,
        evaluation=evaluation_text,
        repo_id=repo_id,
    )


def save_model_folder(
    model,
    tokenizer: ScGrnTokenizer,
    network: GeneRegulatoryNetwork | None,
    output_dir: str | os.PathLike,
    *,
    evaluation: dict | None = None,
    training_data: str = "Not recorded.",
    repo_id: str = "org/scgrn",
    plot: bool = True,
    **card_options,
) -> Path:
    """Write a complete model folder, ready for `push_to_hub`: `config.json` (with `auto_map` for every scgrn
    Auto class), `model.safetensors` (weights + GRN edge buffer), tokenizer files, the modeling code,
    `grn_edges.parquet` + `grn_provenance.json` (with the mask options), `prior_report.json`, the mask PNG and a
    `README.md` model card. Written into a temporary sibling folder, then renamed."""
    from .data import atomic_folder

    output_dir = Path(output_dir)
    with atomic_folder(output_dir) as temporary:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        config_path = temporary / "config.json"
        config = json.loads(config_path.read_text())
        config["auto_map"] = {"AutoConfig": "configuration_scgrn.ScGrnConfig"} | {
            auto: f"modeling_scgrn.{cls.__name__}" for auto, cls in MODEL_CLASSES.items()
        }
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        report = None
        if network is not None:
            genes = tokenizer.convert_ids_to_tokens(tokenizer.gene_vocab_ids.tolist())
            report = prior_report(network, genes)
            network.restrict(genes).save(temporary, mask_options=model.config.mask_description())
            (temporary / "prior_report.json").write_text(json.dumps(report, indent=2))
            if plot:
                plot_mask(network, genes, temporary / "grn_mask.png")
        if evaluation is not None:
            (temporary / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=jsonable))
        card = model_card(model, network, report, repo_id=repo_id, training_data=training_data,
                          evaluation=_flat_metrics(evaluation), **card_options)
        (temporary / "README.md").write_text(card)
    return output_dir


def _flat_metrics(evaluation: dict | None) -> dict | None:
    if not evaluation:
        return None
    return {k: v for k, v in evaluation.items() if isinstance(v, (int, float, str))}


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
        n_bins=tokenizer.n_bins or n_bins or 51,
        **options,
    )


def add_config_arguments(parser) -> None:
    """The options every training script shares: `--config FILE` and repeatable `--set section.option=value`."""
    parser.add_argument("--config", default=None, help="YAML/JSON file with `model` and `training` sections")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.OPTION=VALUE",
                        help="override one config value (repeatable)")


def script_options(config_path: str | None, overrides: list[str], sections: dict[str, type | None]) -> dict:
    """Options of a script: a YAML/JSON file of sections (`model`, `training`, `data`, ...) then `section.key=value`
    overrides from the command line (values parsed as YAML). Unknown sections are refused; each section's keys
    are checked by whoever consumes it (`ScGrnConfig`, `TrainingConfig.from_dict`)."""
    values = load_yaml_or_json(config_path) if config_path else {}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown} in {config_path}; sections are {sorted(sections)}.")
    options = {name: dict(values.get(name) or {}) for name in sections}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.option=value, e.g. training.max_steps=100.")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        if section not in sections:
            raise ValueError(f"override {item!r} names unknown section {section!r}; sections are {sorted(sections)}.")
        options[section][name] = yaml.safe_load(raw)
    return options


def check_model_options(options: dict) -> dict:
    """Refuse model options that `ScGrnConfig` does not define (before any work starts)."""
    import inspect

    known = set(inspect.signature(ScGrnConfig.__init__).parameters) - {"self", "kwargs"}
    known |= {"num_labels", "id2label", "label2id", "attn_implementation", "problem_type"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; see ScGrnConfig for the options.")
    return options


def read_cells(source, backed: bool = False):
    """An AnnData from an `.h5ad` path, or scanpy's bundled `pbmc68k_reduced` (raw counts recovered) by name; an
    AnnData object is taken as it is. `backed=True` opens the file read-only without loading the matrix (files
    larger than memory)."""
    import anndata

    from .data import pbmc68k_reduced_counts

    if isinstance(source, anndata.AnnData):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"cells must be an AnnData, an .h5ad path or 'pbmc68k_reduced', not {type(source).__name__}.")
    if source == "pbmc68k_reduced":
        return pbmc68k_reduced_counts()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (give an .h5ad file or 'pbmc68k_reduced').")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); re-download or re-export it.")
    try:
        return anndata.read_h5ad(path, backed="r" if backed else None)
    except Exception as error:  # h5py/anndata raise many types for damaged files
        raise ValueError(f"{path} could not be read as an .h5ad file ({type(error).__name__}: {error}); the file is "
                         "corrupt or truncated.") from error


def read_cells_from(sources: str | list[str], backed: bool = False):
    """One AnnData from one or several sources (`read_cells` each); several are joined on the union of their genes
    (absent genes count 0) with a `dataset` obs column naming the source of each cell."""
    import anndata

    if not isinstance(sources, (list, tuple)):
        return read_cells(sources, backed)
    if len(sources) == 1:
        return read_cells(sources[0], backed)
    if backed:
        raise ValueError("backed mode reads one .h5ad at a time; tokenize each file to its own folder (or join "
                         "them in memory without --backed).")
    parts = {}
    for number, source in enumerate(sources):
        adata = read_cells(source)
        if isinstance(source, (str, os.PathLike)):
            name = Path(source).stem if source != "pbmc68k_reduced" else source
        else:
            name, adata = f"adata{number}", adata.copy()  # var_names_make_unique must not change the caller's
        adata.var_names_make_unique()
        parts[name] = adata
    return anndata.concat(parts, join="outer", label="dataset", index_unique="-", fill_value=0)


def describe_sources(sources) -> list[dict]:
    """What a dataset was made from, safe to publish: each file's name and SHA-256 (never its path), scanpy's
    bundled dataset by name, or an in-memory AnnData by its shape."""
    from .folders import file_sha256

    described = []
    for source in sources if isinstance(sources, (list, tuple)) else [sources]:
        if not isinstance(source, (str, os.PathLike)):
            described.append({"name": f"AnnData object ({source.n_obs} cells x {source.n_vars} genes)"})
        elif source == "pbmc68k_reduced":
            described.append({"name": "pbmc68k_reduced (bundled with scanpy)"})
        else:
            described.append({"name": Path(source).name, "sha256": file_sha256(source)})
    return described


def prepare_cells(
    source: str | list[str],
    network: GeneRegulatoryNetwork,
    output_dir: str | os.PathLike,
    *,
    label_column: str | None = None,
    group_column: str | None = None,
    obs_columns: tuple[str, ...] = (),
    max_length: int | None = 1024,
    n_bins: int = 51,
    panel: str = "all",
    n_top_genes: int = 2000,
    test_size: float = 0.2,
    validation_size: float = 0.1,
    seed: int = 0,
    min_genes: int = 0,
    min_cells: int = 0,
    backed: bool = False,
    num_proc: int = 1,
    chunk_size: int = 10_000,
    max_shard_size: str = "500MB",
    tokenizer: "ScGrnTokenizer | str | os.PathLike | None" = None,
    normalize: bool = True,
    overwrite: bool = False,
) -> dict:
    """Cells -> tokenizer + tokenized train/validation/test `DatasetDict` + prior report, under `output_dir`:
    `tokenizer/`, `dataset/` (Arrow shards of at most `max_shard_size`, with `scgrn_metadata.json`: QC, split,
    drops, panel), `prior/` (GRN files), `prior_report.json`. Several sources are joined (`read_cells_from`).

    QC (`min_genes` per cell, `min_cells` per gene; 0 switches a filter off) drops cells and genes with counts in
    the report. `backed=True` reads one `.h5ad` lazily (memory bounded by `chunk_size`; panel must be "all").
    `num_proc` tokenizes chunks in parallel processes. `tokenizer` (a tokenizer, or a folder holding one, such as
    a pretrained model's) fixes the vocabulary instead of building one from the data's genes, so the dataset can
    finetune that model: genes outside it are dropped and counted (an error when none is left, a warning below half
    of the vocabulary); panel must be "all" and `min_cells` 0 then. `normalize=False` takes values that are already
    normalised (e.g. log1p of total-count-normalised counts) as they are, instead of refusing non-count data and
    normalising it (panel "all" only: the variable-gene panels normalise raw counts themselves). Returns the
    report. The sources are described by file name and SHA-256, never by path. A non-empty `output_dir` is refused
    unless `overwrite`; the folder is written under a temporary name and renamed when complete."""
    import datasets

    from .data import qc_masks, save_dataset_atomically, split_cells, tokenize_anndata
    from .folders import atomic_folder, check_output_folder
    from .grn import select_gene_panel

    paths = tuple(s for s in (source if isinstance(source, (list, tuple)) else [source])
                  if isinstance(s, (str, os.PathLike)))
    check_output_folder(output_dir, overwrite=overwrite, inputs=paths)
    adata = read_cells_from(source, backed=backed)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"the cells hold {adata.n_obs} cells x {adata.n_vars} genes; there is nothing to tokenize.")
    if backed and panel != "all":
        raise ValueError(f"panel={panel!r} needs the matrix in memory (variable genes); use panel='all' with backed "
                         "mode, or drop backed mode.")
    columns = [c for c in (label_column, group_column, *obs_columns) if c]
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise ValueError(f"{source} has no obs column(s) {missing}; columns are {list(adata.obs.columns)}.")
    if label_column is not None and adata.obs[label_column].nunique() < 2:
        raise ValueError(f"label column {label_column!r} has a single class; classification needs at least two.")
    if not normalize and panel != "all":
        raise ValueError(f"normalize=False (values already normalised) needs panel='all', not {panel!r}: the "
                         "variable-gene panels normalise raw counts themselves.")
    if tokenizer is not None:
        if not isinstance(tokenizer, ScGrnTokenizer):
            if not (Path(tokenizer) / "tokenizer.json").is_file():
                raise ValueError(f"{tokenizer} holds no scgrn tokenizer (tokenizer.json); give a model/ folder a run "
                                 "wrote, or a data folder's tokenizer/.")
            tokenizer = ScGrnTokenizer.from_pretrained(tokenizer)
        if panel != "all" or min_cells:
            raise ValueError("with a given tokenizer its vocabulary is the gene panel: use panel='all' and "
                             "min_cells=0 (genes outside the vocabulary are dropped and counted).")
    cells_kept, genes_kept, qc_report = qc_masks(adata, min_genes=min_genes, min_cells=min_cells,
                                                 chunk_size=chunk_size)
    if tokenizer is not None:
        genes = tokenizer.convert_ids_to_tokens(tokenizer.gene_vocab_ids.tolist())
        panel_report = {"strategy": "tokenizer", "panel_genes": len(genes),
                        "vocabulary_genes_in_data": tokenizer.check_coverage(list(adata.var_names.astype(str)))}
    elif panel == "all":
        genes = list(adata.var_names[genes_kept].astype(str))
        panel_report = {"strategy": "all", "panel_genes": len(genes)}
    else:
        subset = adata[cells_kept][:, genes_kept] if not (cells_kept.all() and genes_kept.all()) else adata
        genes, panel_report = select_gene_panel(subset, network, n_top_genes=n_top_genes, strategy=panel)
    if tokenizer is None:
        tokenizer = ScGrnTokenizer.from_genes(genes, n_bins=n_bins)
    report = prior_report(network, genes)
    network.to_vocab_edges(tokenizer)  # fails early, with the reason, when the prior misses the panel
    dataset, tokenize_report = tokenize_anndata(adata, tokenizer, obs_columns=tuple(columns), max_length=max_length,
                                                cells_kept=None if cells_kept.all() else cells_kept,
                                                num_proc=num_proc, chunk_size=chunk_size, normalize=normalize)
    obs = adata.obs[cells_kept]
    if label_column is not None and obs[label_column].nunique() < 2:
        raise ValueError(f"after QC, label column {label_column!r} has a single class; lower min_genes.")
    splits = split_cells(obs, label_column=label_column, group_column=group_column,
                         test_size=test_size, validation_size=validation_size, seed=seed)
    dataset_dict = datasets.DatasetDict({name: dataset.select(rows) for name, rows in splits.items()})
    metadata = {
        "sources": describe_sources(source),
        "cells": int(cells_kept.sum()),
        "qc": qc_report,
        "tokenization": {**tokenize_report, "normalized_by_scgrn": normalize},
        "panel": panel_report,
        "split": {"seed": seed, "label_column": label_column, "group_column": group_column,
                  **{name: int(len(rows)) for name, rows in splits.items()}},
    }
    with atomic_folder(output_dir) as folder:
        save_dataset_atomically(dataset_dict, folder / "dataset", metadata, max_shard_size=max_shard_size)
        tokenizer.save_pretrained(folder / "tokenizer")
        network.restrict(genes).save(folder / "prior")
        (folder / "prior_report.json").write_text(json.dumps({"prior": report, **metadata}, indent=2,
                                                             default=jsonable))
    return {"prior": report, **metadata}


def _load_prepared(data_dir: Path):
    import datasets

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data folder {data_dir} does not exist; create it with data/tokenize_cells.py.")
    for part in ("dataset", "tokenizer", "prior"):
        if not (data_dir / part).exists():
            raise ValueError(f"{data_dir} lacks {part}/; create it with data/tokenize_cells.py.")
    dataset = datasets.load_from_disk(str(data_dir / "dataset"))
    needed = {"input_ids", "expression_values", "expression_bins"}
    for name, split in dataset.items():
        missing = needed - set(split.column_names)
        if missing:
            raise ValueError(f"split {name!r} of {data_dir / 'dataset'} lacks column(s) {sorted(missing)}.")
    metadata_path = data_dir / "dataset" / "scgrn_metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    tokenizer = ScGrnTokenizer.from_pretrained(data_dir / "tokenizer")
    network = GeneRegulatoryNetwork.load(data_dir / "prior")
    return dataset, tokenizer, network, metadata


def check_model_source(source: str | os.PathLike) -> str:
    """Refuse, with the reason, a model that cannot be loaded: a local folder must exist and hold `config.json` and
    a readable `model.safetensors`; anything that is not a folder here must look like a Hub repo id
    (`namespace/name`), which transformers then looks up (its cache first)."""
    from huggingface_hub.utils import validate_repo_id
    from safetensors import SafetensorError, safe_open

    folder = Path(source)
    if not folder.is_dir():
        try:
            validate_repo_id(str(source))
        except ValueError:
            raise ValueError(f"there is no model folder at {source}; give the model/ folder a pretraining or "
                             "finetuning run wrote, or a Hub repo id such as org/scgrn.") from None
        if folder.exists() or str(source).count("/") != 1:
            raise ValueError(f"{source} is neither a model folder nor a Hub repo id (namespace/name).")
        return str(source)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json, so it is not a saved scgrn model; give the model/ folder a "
                         "pretraining or finetuning run wrote.")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ValueError(f"{folder} has no model.safetensors (scgrn saves weights only as safetensors).")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights} is damaged or truncated ({error}); copy or download it again.") from None
    return str(folder)


def load_pretrained(model_class, source: str | os.PathLike, **options):
    """`model_class.from_pretrained(source, **options)` after [`check_model_source`], with transformers' load
    report (a table of every new or unused weight) replaced by one line: which head is new, which is unused.
    Refuses a model whose encoder weights are missing."""
    from safetensors import SafetensorError
    from transformers.utils import logging as transformers_logging

    source = check_model_source(source)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(source, output_loading_info=True, **options)
    except SafetensorError as error:
        raise ValueError(f"the weights of {source} could not be read ({error}); copy or download them again.") from None
    finally:
        transformers_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", []))
    encoder_missing = [k for k in missing if model is model.base_model or k.split(".")[0] == model.base_model_prefix]
    if encoder_missing:
        raise ValueError(f"{source} lacks encoder weights ({', '.join(encoder_missing[:3])}, ...): it is not an scgrn "
                         f"model of this architecture.")
    new_heads = sorted({k.split(".")[0] for k in missing})
    unused = sorted({k.split(".")[0] for k in info.get("unexpected_keys", [])})
    if new_heads or unused:
        logger.warning(f"loaded the encoder of {source}; " + "; ".join(
            part for part in (f"new head ({', '.join(new_heads)}), trained from scratch" if new_heads else "",
                              f"its {', '.join(unused)} head is not used" if unused else "") if part) + ".")
    return model


def check_compatible(folder: str, tokenizer: ScGrnTokenizer) -> ScGrnConfig:
    """Refuse, before any weight is loaded or step taken, a checkpoint whose vocabulary is not the data's."""
    folder = check_model_source(folder)
    config = ScGrnConfig.from_pretrained(folder)
    saved_tokenizer = Path(folder) / "tokenizer.json"
    if config.vocab_size != len(tokenizer) or (
        saved_tokenizer.exists() and ScGrnTokenizer.from_pretrained(folder).get_vocab() != tokenizer.get_vocab()
    ):
        raise ValueError(f"{folder} was trained on another gene vocabulary ({config.vocab_size} tokens) than the data "
                         f"were tokenized with ({len(tokenizer)} tokens): tokenize the data with that model's tokenizer "
                         "(data/tokenize_cells.py on the same genes) or train from scratch.")
    return config


def run_pretraining(data_dir, output_dir, *, model_options: dict, training_options: dict,
                    init_from: str | None = None) -> dict:
    """Masked-expression pretraining on `data_dir` (from `prepare_cells`). Writes the model folder to
    `output_dir/model` and returns the summary (masked-value loss of the model vs the per-gene-mean baseline)."""
    from .data import DataCollatorForMaskedExpression
    from .training import TrainingConfig, gene_mean_values, masked_expression_metrics, train

    training = TrainingConfig.from_dict({"output_dir": str(output_dir), **training_options})
    check_model_options(model_options)
    dataset, tokenizer, network, metadata = _load_prepared(data_dir)
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

    history = train(model, dataset["train"], collator.pad, training, evaluate=evaluate, batch_transform=collator.mask,
                    project_name="pretrain",
                    extra_tracker_config={f"model/{k}": v for k, v in model.config.mask_description().items()})
    accelerator = history.pop("accelerator")
    final = history["eval"][-1]
    summary = {"final_step": history["final_step"], "validation": final}
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model)
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
    from .data import DataCollatorForCellClassification
    from .training import TrainingConfig, classification_metrics, embedding_metrics, plot_umap, train

    training = TrainingConfig.from_dict({"output_dir": str(output_dir), **training_options})
    check_model_options(model_options)
    dataset, tokenizer, network, metadata = _load_prepared(data_dir)
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
        collator = _WithClassWeights(collator, weights)
    plain_collator = DataCollatorForCellClassification(model.config.pad_token_id, label2id, label_column)

    def evaluate(unwrapped, accelerator):
        scores = classification_metrics(unwrapped, dataset["validation"], plain_collator)
        return {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"]}

    history = train(model, dataset["train"], collator, training, evaluate=evaluate, metric_for_best="macro_f1",
                    project_name="finetune")
    accelerator = history.pop("accelerator")
    model = accelerator.unwrap_model(model)
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
        "best_validation_macro_f1": max(e["macro_f1"] for e in history["eval"]),
        "steps": history["final_step"],
        "grn_mode": model.config.grn_mode,
        **{f"test_{k}": v for k, v in embedding_metrics(test["embeddings"], test["true_labels"],
                                                         seed=training.seed).items()},
        "per_class": test["per_class"],
        "confusion_matrix": test["confusion_matrix"],
    }
    if accelerator.is_main_process and save_outputs:
        save_model_folder(model, tokenizer, network, Path(output_dir) / "model", evaluation=evaluation,
                          training_data=_training_data_text(metadata, f"cell-type finetuning on `{label_column}`"))
        plot_confusion_matrix(test["confusion_matrix"], classes, Path(output_dir) / "confusion_matrix.png")
        plot_umap(test["embeddings"], test["true_labels"], Path(output_dir) / "umap_test_cells.png",
                  title=f"held-out cells, {model.config.grn_mode} mask", seed=training.seed)
    return evaluation


class _WithClassWeights:
    """Adds the inverse-frequency `class_weights` to every training batch."""

    def __init__(self, collator, weights: torch.Tensor):
        self.collator, self.weights = collator, weights

    def __call__(self, features):
        batch = self.collator(features)
        batch["class_weights"] = self.weights
        return batch


def plot_confusion_matrix(matrix, classes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(classes), 0.8 + 0.5 * len(classes)))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="held-out confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _training_data_text(metadata: dict, task: str) -> str:
    split = metadata.get("split", {})
    sources = metadata.get("sources") or [{"name": Path(str(metadata.get("source", "?"))).name}]  # older datasets
    names = ", ".join(s["name"] + (f" (sha256 {s['sha256'][:16]})" if "sha256" in s else "") for s in sources)
    return (f"{task} on `{names}` ({metadata.get('cells', '?')} cells; split seed "
            f"{split.get('seed')}: {split.get('train')} train / {split.get('validation')} validation / "
            f"{split.get('test')} test cells).")


COMPARED_METRICS = ("test_accuracy", "test_macro_f1", "test_silhouette", "test_leiden_ari", "test_leiden_nmi")


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
    _plot_comparison(table, output_dir / "comparison.png")
    return {"runs": runs, "markdown": markdown}


def _plot_comparison(table, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in COMPARED_METRICS]
    modes = list(dict.fromkeys(table["grn_mode"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.4))
    for ax, metric in zip(axes, metrics):
        for x, mode in enumerate(modes):
            values = table.loc[table["grn_mode"] == mode, metric].to_numpy()
            ax.bar(x, values.mean(), color=f"C{x}", alpha=0.6)
            ax.scatter(np.full(values.size, x), values, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(modes)), modes, rotation=30)
        ax.set_title(metric.removeprefix("test_"))
    fig.suptitle("prior (grn) vs unconstrained (dense) vs sparsity-matched controls; dots are seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
