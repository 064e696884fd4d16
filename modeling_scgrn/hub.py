"""Publishing scgrn models to the Hugging Face Hub: weights, GRN files, tokenizer, code and model card together.

Everything is checked before the first request, so a push that would publish an incomplete model (no tokenizer,
no GRN, a bad repo id, no token) fails without uploading anything.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from importlib.resources import files
from pathlib import Path

import yaml
from safetensors import safe_open

from .configuration_scgrn import AUTO_HEADS, SHIPPED_CODE, ScGrnConfig
from .folders import atomic_folder, jsonable
from .networks import GeneRegulatoryNetwork, coverage_line, plot_mask, prior_report
from .tokenization_scgrn import ScGrnTokenizer

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
GRN_FILES = ("grn_edges.parquet", "grn_provenance.json")
MODEL_FILES = ("config.json", "model.safetensors", "README.md", *SHIPPED_CODE)


def check_model_folder(folder: str | os.PathLike) -> dict:
    """Refuse a folder that is not a complete scgrn model (see `save_model_folder`). Returns its config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; write one with modeling_scgrn.pipeline.save_model_folder.")
    missing_tokenizer = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing_tokenizer:
        raise ValueError(f"{folder} has no tokenizer ({', '.join(missing_tokenizer)} missing): a model without its "
                         "gene vocabulary cannot be used; save the tokenizer into the folder first.")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {missing}; write it with modeling_scgrn.pipeline.save_model_folder.")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "scgrn":
        raise ValueError(f"{folder}/config.json is not an scgrn config (model_type={config.get('model_type')!r}).")
    missing_grn = [name for name in GRN_FILES if not (folder / name).is_file()]
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        edge_keys = [k for k in weights.keys() if k.endswith("grn_edges")]
        stored_edges = weights.get_slice(edge_keys[0]).get_shape()[1] if edge_keys else 0
    if config.get("grn_mode") != "dense" and (missing_grn or stored_edges == 0):
        raise ValueError(f"{folder} has no GRN ({', '.join(missing_grn) or 'no edges in model.safetensors'}): a "
                         "prior-masked model cannot be rebuilt without it; attach the prior and save again.")
    if stored_edges != config.get("num_grn_edges", 0):
        raise ValueError(f"model.safetensors holds {stored_edges} GRN edges but config.json says "
                         f"{config.get('num_grn_edges')}: the folder is inconsistent.")
    return config


def push_model_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    commit_message: str = "Upload scgrn model (weights, GRN prior, tokenizer, model card)",
    endpoint: str | None = None,
):
    """Upload a complete model folder to `repo_id` with huggingface_hub (`create_repo`, then `upload_folder`).

    `token` defaults to huggingface_hub's own lookup (`HF_TOKEN`, then the saved login); `revision` names a
    branch (created when missing); `create_pr=True` opens a pull request against the default branch instead of
    committing. Returns the
    `CommitInfo`."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({error}); use 'namespace/name'.") from error
    if "/" not in repo_id:
        raise ValueError(f"{repo_id!r} has no namespace; use 'your-user-or-org/{repo_id}'.")
    if create_pr and revision not in (None, "main"):
        raise ValueError("the Hub opens pull requests against the default branch: use create_pr=True without "
                         f"revision, or revision={revision!r} without create_pr.")
    check_model_folder(folder)
    token = token or get_token()
    if not token:
        raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (nothing was uploaded).")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        return api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, revision=revision, create_pr=create_pr,
            commit_message=commit_message,
        )
    except OSError:  # the Hub's own errors (HfHubHTTPError) say what went wrong
        raise
    except Exception as error:
        if type(error).__module__.split(".")[0] not in ("httpx", "httpx2", "requests", "urllib3"):
            raise
        raise ConnectionError(f"could not reach the Hub at {api.endpoint} ({error}); check the network or "
                              "HF_ENDPOINT.") from error


def push_to_hub(model, tokenizer, network, repo_id: str, **options):
    """Save `model` with its tokenizer and GRN into a temporary folder (`save_model_folder`), then publish it
    (`push_model_folder`). `options` go to `push_model_folder`, except `evaluation` and `training_data`, which
    go into the model card."""
    if tokenizer is None:
        raise ValueError("push_to_hub needs the tokenizer: a model without its gene vocabulary cannot be used.")
    if network is None and model.config.grn_mode != "dense":
        raise ValueError("push_to_hub needs the GeneRegulatoryNetwork the model's mask was built from.")
    card = {k: options.pop(k) for k in ("evaluation", "training_data") if k in options}
    with tempfile.TemporaryDirectory(prefix="scgrn-push-") as folder:
        path = save_model_folder(model, tokenizer, network, Path(folder) / "model", repo_id=repo_id, **card)
        return push_model_folder(path, repo_id, **options)


def model_card(
    model,
    network: GeneRegulatoryNetwork | None,
    report: dict | None,
    *,
    repo_id: str = "org/scgrn",
    training_data: str = "Not recorded.",
    evaluation: dict | None = None,
    comparison_markdown: str | None = None,
    baselines_markdown: str | None = None,
    prior_coverage: dict | None = None,
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
    if baselines_markdown:
        evaluation_text += "\n\nAgainst simple baselines on the same cells:\n\n" + baselines_markdown
    if comparison_markdown:
        evaluation_text += "\n\nPrior versus sparsity-matched controls:\n\n" + comparison_markdown
    if prior_coverage:
        prior_section += "\n- In the training cells: " + coverage_line(prior_coverage).removeprefix("prior coverage: ")
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
    output_dir = Path(output_dir)
    with atomic_folder(output_dir) as temporary:
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        config_path = temporary / "config.json"
        config = json.loads(config_path.read_text())
        config["auto_map"] = {"AutoConfig": "configuration_scgrn.ScGrnConfig"} | {
            auto: f"modeling_scgrn.{head}" for auto, head in AUTO_HEADS.items()
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
    return {k: v for k, v in evaluation.items()
            if isinstance(v, (int, float)) or (isinstance(v, str) and "\n" not in v)}


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
                              f"not used: its {', '.join(unused)} weights" if unused else "") if part) + ".")
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
