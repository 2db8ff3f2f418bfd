"""Files: atomic writes (write new, then rename), whole output folders (write new, swap in), file hashes, one file
mode for everything we write.  The rules for output paths are in docs/faults.md ("Outputs, kills and the operating
system")."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from audiopg.core.errors import AudioPGError

TEMP_SUFFIX = ".tmp"  # every temp file or folder we make is ".NAME.<random>.tmp" beside its final path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def file_mode() -> int:
    """The mode a plain new file gets here (0666 less the umask); mkstemp alone would give 0600."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """The mode a plain new folder gets here (0777 less the umask); mkdtemp alone would give 0700."""
    return 0o777 & ~_umask()


def named_os_error(err: OSError, path: str | os.PathLike) -> OSError:
    """``err`` as a failure to write ``path`` (a failed write to an open file names no path, and a temp file's
    name would mean nothing to the user)."""
    return type(err)(err.errno, f"cannot write it ({err.strerror or err})", str(path))


def make_folder(folder: str | os.PathLike, path: str | os.PathLike | None = None) -> None:
    """``mkdir -p folder``, for writing ``path`` (default: the folder); the error names ``path`` and says why not."""
    folder = Path(folder)
    path = Path(path) if path is not None else folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(err.errno, f"cannot write it ({blocker} is a file, not a folder)",
                                 str(path)) from None
    except OSError as err:
        raise named_os_error(err, path) from None


def make_parent(path: Path) -> None:
    """Create the folder that ``path`` goes into (see :func:`make_folder`)."""
    make_folder(path.parent, path)


def _write_temp(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    make_parent(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as err:
        raise named_os_error(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename in (None, tmp):
            raise named_os_error(err, path) from None
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
    try:
        for tmp, final in pending:
            try:
                os.replace(tmp, final)
            except OSError as err:
                raise named_os_error(err, final) from None
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # only those not renamed, when one rename failed
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


# ----------------------------------------------------------------------------- output paths
def is_temp(path: Path) -> bool:
    """Whether ``path`` is one of our temp files or folders (``.NAME.<random>.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_temp_files(folder: str | os.PathLike) -> None:
    """Remove the temp files that killed writes left in ``folder`` (the file each was meant for is intact)."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            if is_temp(p) and p.is_file():
                p.unlink(missing_ok=True)


def check_new_file(path: str | os.PathLike, *, overwrite: bool, option: str = "--out") -> None:
    """An output file: refuse a folder there, and an existing file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise AudioPGError(f"{path}: is a folder; {option} names a file")
    if path.exists() and not overwrite:
        raise AudioPGError(f"{path}: already exists; give --overwrite to replace it, or choose another {option}")
    make_folder(path.parent, path)  # fail now, before the work, when the file could not be written


def check_own_folder(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str,
                     option: str = "--out") -> None:
    """A folder that a command continues: refuse it when it holds anything ``is_ours`` does not recognize."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AudioPGError(f"{path}: is a file, not {what}; choose another {option}")
    foreign = sorted(p.name for p in path.iterdir() if not is_temp(p) and not is_ours(p)) if path.is_dir() else []
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise AudioPGError(f"{path}: not {what} (it holds {', '.join(foreign[:3])}{more}); choose another {option}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _new_sibling(path: Path) -> Path:
    """An empty folder ``.NAME.<pid>.<random>.tmp`` beside ``path``, with the usual folder mode."""
    try:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX))
    except OSError as err:
        raise named_os_error(err, path) from None
    os.chmod(tmp, folder_mode())
    return tmp


def _remove_dead_siblings(path: Path) -> None:
    """The temp folders of ``path`` that a killed command left (their process is gone)."""
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        pid = p.name[len(prefix):].split(".", 1)[0]
        if p.name.startswith(prefix) and is_temp(p) and p.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, *, overwrite: bool, kind: str, marker: str,
                  option: str = "--out") -> Iterator[Path]:
    """The one rule for an output folder: all of it new, or nothing changed.

    Refuses a non-empty ``path`` unless ``overwrite``, and even then one without ``marker`` (the file every
    ``kind`` output holds: never replace what is not ours).  Yields a new temp folder beside ``path`` to write
    into; when the block ends normally it replaces ``path`` whole, when it raises it is removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AudioPGError(f"{path}: is a file, not a folder; choose another {option}")
    entries = [p for p in path.iterdir() if not is_temp(p)] if path.is_dir() else []
    if entries and not overwrite:
        raise AudioPGError(f"{path}: not empty ({len(entries)} entries); give --overwrite to replace it whole, "
                           f"or choose another {option}")
    if entries and not (path / marker).exists():
        raise AudioPGError(f"{path}: does not hold {kind} (no {marker}), so --overwrite will not replace it; "
                           f"choose another {option}")
    make_parent(path)
    _remove_dead_siblings(path)
    tmp = _new_sibling(path)
    try:
        yield tmp
        _swap_in(tmp, path)
    except OSError as err:
        if err.filename is None or not str(err.filename).startswith(str(tmp)):
            raise
        shown = path / Path(err.filename).relative_to(tmp)  # the name the user gave, not the temp folder's
        raise type(err)(err.errno, err.strerror, str(shown)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a swap


def _swap_in(new: Path, path: Path) -> None:
    """Rename the folder ``new`` to ``path``; an old ``path`` is moved aside first, then removed."""
    old = _new_sibling(path) if path.is_dir() and any(path.iterdir()) else None
    try:
        if old is not None:
            os.replace(path, old)  # onto the empty folder just made
        os.replace(new, path)
    except OSError as err:
        if old is not None and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old, path)  # put the old one back
        raise named_os_error(err, path) from None
    finally:
        if old is not None and path.exists():
            shutil.rmtree(old, ignore_errors=True)
    _sync_folder(path.parent)


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to ``path`` (a log that grows line by line, not atomic); an error names ``path``."""
    try:
        with open(path, "a") as f:
            f.write(text)
    except OSError as err:
        raise named_os_error(err, Path(path)) from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
