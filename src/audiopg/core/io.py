"""Files: atomic writes (write new, then rename), file hashes, one file mode for everything we write."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator


def file_mode() -> int:
    """The mode a plain new file gets here (0666 less the umask); mkstemp alone would give 0600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_temp(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # make renames durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_group() -> Iterator[Callable[[str | os.PathLike, Callable[[IO[bytes]], Any]], None]]:
    """All or none of several files: ``stage(path, write)`` writes each to a temp file beside it; when the block
    ends normally every temp file is renamed over its path, when it raises they are all removed."""
    pending: list[tuple[Path, Path]] = []

    def stage(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
        pending.append((_write_temp(Path(path), write), Path(path)))

    try:
        yield stage
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for tmp, final in pending:
        os.replace(tmp, final)
    for folder in {final.parent for _, final in pending}:
        _sync_folder(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, sync it, give it the usual mode, rename it over ``path``:
    never a half-written ``path``."""
    with atomic_group() as stage:
        stage(path, write)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    def copy(f: IO[bytes]) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)
    return atomic_write(dst, copy)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """``obj`` (plain JSON types) as JSON with a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
