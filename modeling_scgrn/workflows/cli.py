"""What every scgrn script shares once its arguments are parsed: a user error becomes one line
(`error: <what is wrong, how to fix it>`, exit status 2; the traceback only with `--debug` or `SCGRN_DEBUG=1`),
printed once however many processes run; the output folder's lifetime (`storage.folders.output_folder`); and the
options themselves (config files with `--set` overrides). Only scripts import it.

The scripts parse their arguments with argparse alone and import scgrn after that, so `--help` answers at once.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import yaml

# What a user causes: a bad file, folder, column, option or value (ValueError, OSError and their kin), or a
# missing optional extra (ImportError). Anything else is a bug in scgrn and keeps its traceback.
USER_ERRORS = (ValueError, OSError, ImportError)


def debugging(args=None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("SCGRN_DEBUG", "").lower() in ("1", "true", "yes")


def is_main_process() -> bool:
    """Rank 0 of a torchrun/accelerate launch (or a plain single process)."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, FileNotFoundError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


def run_script(args, work: Callable[[], object], *, output_dir: str | None = None, task: str | None = None,
               resume: bool = False, inputs: tuple = ()):
    """Run `work()` the way every scgrn script does. With `output_dir`, the folder is checked and kept tidy by
    `folders.output_folder` (refused when not empty unless `args.overwrite` or `resume`; removed again when the
    run fails before its first checkpoint). Returns what `work` returns; exits with status 2 on a user error."""
    from ..storage.folders import output_folder

    main_process = is_main_process()
    try:
        scope = nullcontext() if output_dir is None else output_folder(
            output_dir, task or "run", overwrite=bool(getattr(args, "overwrite", False)), resume=resume,
            inputs=tuple(i for i in inputs if i), main_process=main_process)
        with scope:
            return work()
    except USER_ERRORS as error:
        if debugging(args):
            raise
        if main_process:
            print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)


def load_yaml_or_json(path: str | os.PathLike) -> dict:
    """A config file's mapping: YAML (`.yaml`, `.yml`) or JSON (`.json`); a syntax error, another extension or
    anything but a mapping is refused in one line."""
    path = Path(path)
    kind = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"config file {path} is neither YAML (.yaml, .yml) nor JSON (.json); give one of those.")
    text = path.read_text()
    try:
        values = yaml.safe_load(text) if kind == "YAML" else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        raise ValueError(f"config file {path} is not valid {kind}: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of option names to values.")
    return values


def script_options(config_path: str | None, overrides: list[str], sections: dict[str, type | None]) -> dict:
    """Options of a script: a YAML/JSON file of sections (`model`, `training`, `data`, ...) then `section.key=value`
    overrides from the command line (values parsed as YAML). Unknown sections are refused; each section's keys
    are checked by whoever consumes it (`ScGrnConfig`, `TrainingConfig.from_dict`)."""
    values = load_yaml_or_json(config_path) if config_path else {}
    unknown = sorted(set(values) - set(sections))
    if unknown:
        raise ValueError(f"unknown section(s) {unknown} in {config_path}; sections are {sorted(sections)}.")
    wrong = [name for name in sections if values.get(name) is not None and not isinstance(values[name], dict)]
    if wrong:
        raise ValueError(f"section(s) {wrong} of {config_path} must each be a mapping of option names to values "
                         f"(e.g. training: {{max_steps: 100}}), not {type(values[wrong[0]]).__name__}.")
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


def training_script_configs(config: str | None, overrides: list[str], output_dir: str | None = None,
                            resume_from_checkpoint: str | None = None):
    """What a training script's config file and `--set` overrides say: the `model` section (`ScGrnConfig` fields,
    a dict: the vocabulary and prior come from the data) and the `training` section as a `TrainingConfig`, with
    the run's folder and the checkpoint to resume from."""
    from ..train.training import TrainingConfig

    options = script_options(config, overrides, {"model": None, "training": None})
    given = {"output_dir": output_dir, "resume_from_checkpoint": resume_from_checkpoint}
    return options["model"], TrainingConfig.from_dict(options["training"], **{k: v for k, v in given.items() if v})
