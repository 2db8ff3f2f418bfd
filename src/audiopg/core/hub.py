"""Hugging Face Hub repository ids -> local model folders (``pip install audiopg[hub]``).

A name that is no existing path and reads ``owner/name`` (optionally ``owner/name@revision``) is a Hub
repository: :func:`resolve_model_path` downloads its model files into the Hub cache with ``snapshot_download``
(or finds them there) and returns the snapshot folder.  ``HF_HUB_OFFLINE=1`` uses the cache only;
``HF_HUB_CACHE`` moves the cache.  Both are read at each call.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from audiopg.core.errors import CheckpointError

__all__ = ["HUB_FILES", "hub_offline", "repo_id_syntax", "is_repo_id", "split_revision", "resolve_model_path"]

#: the files of a model folder that loading needs or describes (never a large .onnx export)
HUB_FILES = ("encoder.safetensors", "config.json", "results.json", "README.md")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[^@\s]+)?$")


def repo_id_syntax(text: str) -> bool:
    """Whether ``text`` reads ``owner/name`` or ``owner/name@revision`` (whatever exists locally)."""
    return bool(_REPO_ID.match(text)) and not text.split("@")[0].endswith(".safetensors")


def is_repo_id(text: str | os.PathLike) -> bool:
    """A Hub repository id that is not an existing local path."""
    text = os.fspath(text)
    return repo_id_syntax(text) and not Path(text).exists()


def split_revision(repo: str, revision: str | None = None) -> tuple[str, str | None]:
    """``owner/name@rev`` -> (``owner/name``, ``rev``); a ``revision`` argument must agree with the suffix."""
    repo_id, _, suffix = repo.partition("@")
    if suffix and revision is not None and revision != suffix:
        raise CheckpointError(f"{repo}: the revision {suffix!r} in the id differs from revision={revision!r}")
    return repo_id, suffix or revision


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, read at each call (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def resolve_model_path(path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local path as given; a Hub repository id -> the local snapshot folder holding its model files."""
    if not is_repo_id(path):
        if revision is not None:
            raise CheckpointError(f"{path}: revision={revision!r} is for Hugging Face Hub ids (owner/name), "
                                  "not local paths")
        return Path(path)
    repo_id, revision = split_revision(os.fspath(path), revision)
    where = f"{repo_id}" + (f" at revision {revision}" if revision else "") + \
        " (no such local path, so read as a Hugging Face Hub repository id)"
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise CheckpointError(f"{path}: no such local folder or file; as a Hugging Face Hub id it needs "
                              "huggingface_hub: pip install audiopg[hub]") from None
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, allow_patterns=list(HUB_FILES),
                                   local_files_only=hub_offline(), library_name="audiopg")
    except RevisionNotFoundError:
        raise CheckpointError(f"{where}: the repository has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{where}: no such repository on the Hub (or it is private or gated: log in "
                              "with `hf auth login` or set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        mode = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hub could not be reached"
        raise CheckpointError(
            f"{where}: looked for it in the Hugging Face cache ({cache}) and did not "
            f"find it, and {mode}.  Download it once while online, then HF_HUB_OFFLINE=1 loads it "
            "from the cache; or pass a local model folder (e.g. one written by `audiopg export`)") from None
    except HFValidationError as err:
        raise CheckpointError(f"{where}: not a valid repository id or revision ({err})") from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"{where}: the Hub request failed ({err})") from None
    return Path(folder)
