"""Complete model folders on disk: written (weights, tokenizer, GRN files, reports, code, model card) atomically,
checked for completeness before anything is published, and loaded back (a local folder or a Hub repo id).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from safetensors import safe_open

from ..grn.coverage import plot_mask, prior_report
from ..grn.network import EDGES_FILE, PROVENANCE_FILE, GeneRegulatoryNetwork
from ..model import SHIPPED_CODE
from ..model.configuration_scgrn import AUTO_HEADS, MASK_FIELDS, SHAPE_FIELDS, ScGrnConfig
from ..model.tokenization_scgrn import ScGrnTokenizer
from ..storage.folders import atomic_folder, jsonable
from .card import model_card

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
GRN_FILES = (EDGES_FILE, PROVENANCE_FILE)
MODEL_FILES = ("config.json", "model.safetensors", "README.md", *SHIPPED_CODE)


def check_model_folder(folder: str | os.PathLike) -> dict:
    """Refuse a folder that is not a complete scgrn model (see `save_model_folder`). Returns its config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; write one with modeling_scgrn.save_model_folder.")
    missing_tokenizer = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing_tokenizer:
        raise ValueError(f"{folder} has no tokenizer ({', '.join(missing_tokenizer)} missing): a model without its "
                         "gene vocabulary cannot be used; save the tokenizer into the folder first.")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {missing}; write it with modeling_scgrn.save_model_folder.")
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
        if folder.parent.is_dir():  # "runs/modle": a typo'd local path, which would become a slow Hub lookup
            raise ValueError(f"there is no model folder at {source} (its parent folder {folder.parent}/ exists here, "
                             f"so this is a local path, not a Hub repo id); the folders there are "
                             f"{sorted(p.name for p in folder.parent.iterdir() if p.is_dir())[:8]} (for the Hub "
                             f"repo of that name, run from a folder without {folder.parent}/).")
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


def load_pretrained(model_class, source: str | os.PathLike, *, trained_head: bool = False, **options):
    """`model_class.from_pretrained(source, **options)` after [`check_model_source`], with transformers' load
    report (a table of every new or unused weight) replaced by one line: which head is new, which is unused.
    Refuses a model whose encoder weights are missing, and with `trained_head` one whose head for this task
    would be new (random): a task that reads the head (perturbation, knockouts, labels) needs the trained one."""
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
    if trained_head and new_heads:
        held = ", ".join(getattr(model.config, "architectures", None) or ["an encoder without a head"])
        raise ValueError(f"{source} holds {held}, not a trained {model_class.__name__}: its {', '.join(new_heads)} "
                         "head would be random. Give a model folder of that kind (a pretrained model for "
                         "perturbations and knockouts, a finetuned classifier for labels).")
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


# A like-for-like model: the same shape and mask rule, not the same prior edges, control seed or edge count.
ARCHITECTURE_FIELDS = (*SHAPE_FIELDS, *(f for f in MASK_FIELDS if f not in ("grn_mode", "grn_control_seed",
                                                                          "num_grn_edges")))


def architecture_of(folder: str) -> dict:
    """The architecture fields of a saved model's config (`ARCHITECTURE_FIELDS`), to train another model of the
    same shape from scratch: a like-for-like control for finetuning that model."""
    config = ScGrnConfig.from_pretrained(check_model_source(folder))
    return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}


def with_architecture_of(folder: str, model_options: dict) -> dict:
    """`model_options` plus the architecture of `folder` (`architecture_of`); refused where they disagree, so that a
    config's model section never silently replaces the architecture asked for (or the reverse)."""
    architecture = architecture_of(folder)
    clash = {k: v for k, v in model_options.items() if k in architecture and architecture[k] != v}
    if clash:
        raise ValueError(f"{folder} has {', '.join(f'{k}={architecture[k]!r}' for k in clash)} but the model options "
                         f"set {', '.join(f'{k}={v!r}' for k, v in clash.items())}; drop those from the config's "
                         "model section to train that architecture, or drop --architecture_from.")
    return {**architecture, **model_options}
