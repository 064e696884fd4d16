"""What every scgrn script shares once its arguments are parsed: a user error becomes one line
(`error: <what is wrong, how to fix it>`, exit status 2; the traceback only with `--debug` or `SCGRN_DEBUG=1`),
printed once however many processes run, and the output folder's lifetime (`folders.output_folder`).

The scripts parse their arguments with argparse alone and import scgrn after that, so `--help` answers at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from contextlib import nullcontext

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
    from .folders import output_folder

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
