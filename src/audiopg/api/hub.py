"""Publishing a model folder on the Hugging Face Hub (``pip install audiopg[hub]``).

:func:`plan_upload` decides, without any network call, exactly what would be sent: the repository, branch,
visibility, the files of the folder (encoder, card, config, results, ONNX graphs) and the card's text;
:func:`push_to_hub` then creates the repository (and branch) and uploads those files in one commit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from audiopg.core.errors import AudioPGError
from audiopg.core.hub import HUB_FILES, hub_offline, repo_id_syntax, split_revision

__all__ = ["UploadPlan", "plan_upload", "require_hub", "push_to_hub"]


@dataclass(frozen=True)
class UploadPlan:
    """One commit to a Hub model repository."""

    repo_id: str  # owner/name
    revision: str | None  # branch to commit to (created when missing); None = the default branch
    private: bool  # visibility when the repository is created (an existing one keeps its own)
    folder: Path  # the model folder
    files: tuple[str, ...]  # names inside ``folder`` that are uploaded, sorted
    card: str  # the README.md text sent
    commit_message: str


def plan_upload(folder: str | os.PathLike, repo_id: str, *, revision: str | None = None,
                private: bool = False) -> UploadPlan:
    """What :func:`push_to_hub` would send for ``folder`` (a model folder from ``audiopg export``)."""
    folder = Path(folder)
    if not repo_id_syntax(repo_id):
        raise AudioPGError(f"--push-to-hub: {repo_id!r} is not a Hugging Face Hub repository id (owner/name, "
                           "optionally owner/name@branch)")
    repo_id, revision = split_revision(repo_id, revision)
    for needed in ("encoder.safetensors", "README.md"):
        if not (folder / needed).is_file():
            raise AudioPGError(f"{folder}: no {needed}; upload a model folder written by `audiopg export`")
    files = sorted(name for name in os.listdir(folder)
                   if (folder / name).is_file() and (name in HUB_FILES or name.endswith(".onnx")))
    card = (folder / "README.md").read_text()
    if not card.startswith("---\n"):
        raise AudioPGError(f"{folder / 'README.md'}: no Hub metadata block; re-export the folder with "
                           "`audiopg export` to write a current model card")
    return UploadPlan(repo_id, revision, bool(private), folder, tuple(files), card,
                      f"Upload AudioPG encoder ({', '.join(files)})")


def require_hub() -> None:
    """Raise a clear error unless the ``hub`` extra is installed and uploads are allowed."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise AudioPGError("--push-to-hub: needs huggingface_hub: pip install audiopg[hub]") from None
    if hub_offline():
        raise AudioPGError("--push-to-hub: HF_HUB_OFFLINE is set; unset it to upload")


def push_to_hub(plan: UploadPlan, token: str | None = None) -> str:
    """Create the repository (and branch) when missing and upload ``plan.files`` in one commit; returns the
    commit's URL.  ``token``: a Hub token (default: the logged-in one or ``HF_TOKEN``)."""
    require_hub()
    from huggingface_hub import HfApi

    api = HfApi(token=token, library_name="audiopg")
    try:
        api.create_repo(plan.repo_id, repo_type="model", private=plan.private, exist_ok=True)
        if plan.revision is not None:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=plan.repo_id, folder_path=plan.folder, repo_type="model",
                                   revision=plan.revision, allow_patterns=list(plan.files),
                                   commit_message=plan.commit_message)
    except Exception as err:  # noqa: BLE001 - HTTP, authentication and connection failures alike: one line
        raise AudioPGError(f"--push-to-hub: {plan.repo_id}: the upload failed ({type(err).__name__}: {err}); "
                           "log in with `hf auth login` or set HF_TOKEN") from None
    return str(getattr(commit, "commit_url", commit))
