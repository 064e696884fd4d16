"""Publishing a model folder to the Hugging Face Hub: weights, GRN files, tokenizer, code and model card together.

Everything is checked before the first request, so a push that would publish an incomplete model (no tokenizer,
no GRN, a bad repo id, no token) fails without uploading anything.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .model_folder import check_model_folder, save_model_folder


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
