"""Download the evaluation datasets from their official addresses: resumable, verified, extracted.

``audiopg download esc50|us8k|scv2|fsd50k|fsdd --root DIR``.  Files land as ``.part`` and are renamed once
complete and checked (published MD5, else the extracted layout); split zips are read without external tools.
Details and sizes: docs/evaluation.md ("Downloads").
"""
from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from audiopg.core.errors import AudioPGError
from audiopg.core.io import make_folder

__all__ = ["Remote", "DatasetSource", "DOWNLOADS", "DownloadError", "download_file", "download_dataset",
           "extract_archive", "extract_split_zip"]

CHUNK = 1 << 20
USER_AGENT = "audiopg-download/0.1 (+https://github.com/)"
LOCAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)  # writing failed


class DownloadError(AudioPGError):
    """A download failed (network, HTTP status, checksum) or an archive could not be extracted."""


@dataclass(frozen=True)
class Remote:
    """One file to fetch: its URL, the name to store it under and its published MD5 (None if unpublished)."""

    url: str
    filename: str
    md5: str | None = None
    approx_size: str = ""


@dataclass(frozen=True)
class DatasetSource:
    """What ``audiopg download NAME`` fetches and how to check the result."""

    name: str
    title: str
    remotes: tuple[Remote, ...]
    archives: tuple[tuple[str, ...], ...]  # each: the file names of one archive (several for a split zip)
    extract_to: str  # sub-folder of the root to extract into ("" = the root itself)
    marker: str  # path (relative to the root) that must exist afterwards
    data_root: str  # what to pass as --data-root afterwards (relative to the root)
    licence: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


ZENODO_FSD50K = "https://zenodo.org/records/4060432/files"


def _fsd50k(filename: str, md5: str) -> Remote:
    return Remote(f"{ZENODO_FSD50K}/{filename}", filename, md5)


DOWNLOADS: dict[str, DatasetSource] = {
    "esc50": DatasetSource(
        "esc50", "ESC-50 (K. J. Piczak), official GitHub repository archive",
        (Remote("https://github.com/karolpiczak/ESC-50/archive/refs/heads/master.zip", "ESC-50-master.zip",
                None, "~0.6 GB"),),
        (("ESC-50-master.zip",),), "", "ESC-50-master/meta/esc50.csv", "ESC-50-master",
        "CC BY-NC 3.0 (ESC-10 clips CC BY 3.0)",
        ("GitHub branch archives carry no published checksum; checked by layout.",)),
    "us8k": DatasetSource(
        "us8k", "UrbanSound8K (Salamon, Jacoby, Bello), Zenodo record 1203745",
        (Remote("https://zenodo.org/records/1203745/files/UrbanSound8K.tar.gz", "UrbanSound8K.tar.gz",
                "9aa69802bbf37fb986f71ec1483a196e", "~6.0 GB"),),
        (("UrbanSound8K.tar.gz",),), "", "UrbanSound8K/metadata/UrbanSound8K.csv", "UrbanSound8K",
        "CC BY-NC 3.0"),
    "scv2": DatasetSource(
        "scv2", "Speech Commands v0.02 (P. Warden), download.tensorflow.org",
        (Remote("https://download.tensorflow.org/data/speech_commands_v0.02.tar.gz", "speech_commands_v0.02.tar.gz",
                None, "~2.3 GB"),),
        (("speech_commands_v0.02.tar.gz",),), "speech_commands_v0.02", "speech_commands_v0.02/testing_list.txt",
        "speech_commands_v0.02", "CC BY 4.0",
        ("No checksum is published for the tarball; checked by layout. The tarball has no top folder, so it is "
         "extracted into speech_commands_v0.02/.",)),
    "fsd50k": DatasetSource(
        "fsd50k", "FSD50K (Fonseca et al.), Zenodo record 4060432",
        (
            _fsd50k("FSD50K.ground_truth.zip", "ca27382c195e37d2269c4c866dd73485"),
            _fsd50k("FSD50K.metadata.zip", "b9ea0c829a411c1d42adb9da539ed237"),
            _fsd50k("FSD50K.doc.zip", "3516162b82dc2945d3e7feba0904e800"),
            _fsd50k("FSD50K.eval_audio.z01", "3090670eaeecc013ca1ff84fe4442aeb"),
            _fsd50k("FSD50K.eval_audio.zip", "6fa47636c3a3ad5c7dfeba99f2637982"),
            _fsd50k("FSD50K.dev_audio.z01", "faa7cf4cc076fc34a44a479a5ed862a3"),
            _fsd50k("FSD50K.dev_audio.z02", "8f9b66153e68571164fb1315d00bc7bc"),
            _fsd50k("FSD50K.dev_audio.z03", "1196ef47d267a993d30fa98af54b7159"),
            _fsd50k("FSD50K.dev_audio.z04", "d088ac4e11ba53daf9f7574c11cccac9"),
            _fsd50k("FSD50K.dev_audio.z05", "81356521aa159accd3c35de22da28c7f"),
            _fsd50k("FSD50K.dev_audio.zip", "c480d119b8f7a7e32fdb58f3ea4d6c5a"),
        ),
        (("FSD50K.ground_truth.zip",), ("FSD50K.metadata.zip",), ("FSD50K.doc.zip",),
         ("FSD50K.eval_audio.z01", "FSD50K.eval_audio.zip"),
         ("FSD50K.dev_audio.z01", "FSD50K.dev_audio.z02", "FSD50K.dev_audio.z03", "FSD50K.dev_audio.z04",
          "FSD50K.dev_audio.z05", "FSD50K.dev_audio.zip")),
        "", "FSD50K.ground_truth/dev.csv", "", "CC BY 4.0 (clips: CC0, CC BY, CC BY-NC, CC Sampling+)",
        ("MD5s as published on the Zenodo record.",)),
    "fsdd": DatasetSource(
        "fsdd", "Free Spoken Digit Dataset (Z. Jackson et al.), GitHub repository archive",
        (Remote("https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/heads/master.zip",
                "free-spoken-digit-dataset-master.zip", None, "~20 MB"),),
        (("free-spoken-digit-dataset-master.zip",),), "", "free-spoken-digit-dataset-master/recordings",
        "free-spoken-digit-dataset-master", "CC BY-SA 4.0",
        ("GitHub branch archives carry no published checksum; checked by layout.",)),
}


# ----------------------------------------------------------------------------- fetching
def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        r = err.reason
        if isinstance(r, (socket.timeout, TimeoutError)):
            return "connection timed out"
        return str(r.strerror if isinstance(r, OSError) and r.strerror else r)
    if isinstance(err, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(err) or type(err).__name__


def download_file(
    remote: Remote,
    folder: str | os.PathLike,
    *,
    connect_timeout: float = 10.0,
    retries: int = 3,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch ``remote`` into ``folder`` (resuming a ``.part`` file), verify its MD5 when known; return the path.

    A file already present (and matching its MD5, when known) is not fetched
    again.  Connection failures raise :class:`DownloadError` naming the URL
    after ``connect_timeout`` seconds (also the limit for a stalled read);
    failures in the middle of a transfer are retried ``retries`` times
    (resuming), then raise.
    """
    folder = Path(folder)
    make_folder(folder)
    final = folder / remote.filename
    part = folder / (remote.filename + ".part")
    if final.exists():
        if remote.md5 is None or _md5(final) == remote.md5:
            log(f"{final.name}: already downloaded")
            return final
        log(f"{final.name}: present but its MD5 does not match {remote.md5}; downloading again")
        final.unlink()
    attempt = 0
    while True:
        attempt += 1
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(remote.url, headers={"User-Agent": USER_AGENT})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            resp = urllib.request.urlopen(req, timeout=connect_timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # range not satisfiable: the .part is already complete
                break
            raise DownloadError(f"{remote.url}: download failed ({_reason(err)})") from None
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(
                f"{remote.url}: cannot connect ({_reason(err)}); check the network connection, or download the "
                f"file by hand and put it at {final}"
            ) from None
        try:
            with resp:
                status = getattr(resp, "status", 200)
                if have and status != 206:
                    log(f"{final.name}: server ignored the resume request; starting again")
                    have = 0
                mode = "ab" if have else "wb"
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                 desc=remote.filename, disable=None if progress else True) as bar:
                    while True:
                        block = resp.read(CHUNK)
                        if not block:
                            break
                        f.write(block)
                        bar.update(len(block))
                got = part.stat().st_size
                if total is not None and got < total:
                    raise DownloadError(f"{remote.url}: connection closed after {got} of {total} bytes")
            break
        except (urllib.error.URLError, OSError, DownloadError) as err:
            if isinstance(err, OSError) and err.errno in LOCAL_ERRNOS:  # the disk, not the network: no retry
                raise OSError(err.errno, f"cannot write it ({err.strerror})", str(part)) from None
            if attempt > retries:
                raise DownloadError(f"{remote.url}: download interrupted ({_reason(err)}); run the command again "
                                    f"to resume from {part}") from None
            log(f"{final.name}: interrupted ({_reason(err)}); resuming (attempt {attempt + 1})")
            time.sleep(min(5.0, attempt))
    if remote.md5 is not None:
        digest = _md5(part)
        if digest != remote.md5:
            part.unlink()
            raise DownloadError(f"{remote.url}: MD5 mismatch (got {digest}, published {remote.md5}); the partial "
                                "file was deleted, run the command again")
    os.replace(part, final)
    return final


# ----------------------------------------------------------------------------- extraction
def _safe_target(dest: Path, name: str) -> Path:
    target = (dest / name).resolve()
    root = dest.resolve()
    if target != root and root not in target.parents:
        raise DownloadError(f"archive member {name!r} would be written outside {dest}; refusing to extract")
    return target


class _Concatenated:
    """Read-only file object over several files laid end to end (the parts of a split zip)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = list(paths)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.size = sum(self.sizes)
        self.pos = 0
        self.files = [open(p, "rb") for p in self.paths]

    def close(self) -> None:
        for f in self.files:
            f.close()

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        out = bytearray()
        while n > 0 and self.pos < self.size:
            i = max(k for k in range(len(self.starts)) if self.starts[k] <= self.pos)
            off = self.pos - self.starts[i]
            take = min(n, self.sizes[i] - off)
            f = self.files[i]
            f.seek(off)
            data = f.read(take)
            out += data
            self.pos += len(data)
            n -= len(data)
            if not data:
                break
        return bytes(out)


def extract_split_zip(parts: Sequence[str | os.PathLike], dest: str | os.PathLike) -> list[str]:
    """Extract a split ("spanned") zip archive -- ``name.z01, name.z02, ..., name.zip`` in that order.

    Reads the central directory (zip64 aware) from the last part and every
    member from the part its local header sits on (offsets are relative to that
    part), then inflates it with a CRC check.  Handles stored and deflated
    members.  Returns the member names written.
    """
    parts = [Path(p) for p in parts]
    dest = Path(dest)
    buf = _Concatenated(parts)
    try:
        tail_len = min(buf.sizes[-1], 65536 + 22)
        buf.seek(buf.size - tail_len)
        tail = buf.read(tail_len)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0:
            raise DownloadError(f"{parts[-1]}: no zip end-of-central-directory record")
        (_, _disk, cd_disk, _n_disk, n_total, cd_size, cd_offset, _clen) = struct.unpack("<IHHHHIIH", tail[at:at + 22])
        if 0xFFFF in (cd_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
            loc = tail.rfind(b"PK\x06\x07", 0, at)
            if loc < 0:
                raise DownloadError(f"{parts[-1]}: zip64 archive without a zip64 locator")
            _, z64_disk, z64_off, _ = struct.unpack("<IIQI", tail[loc:loc + 20])
            buf.seek(buf.starts[z64_disk] + z64_off)
            rec = buf.read(56)
            if rec[:4] != b"PK\x06\x06":
                raise DownloadError(f"{parts[-1]}: bad zip64 end record")
            (_, _, _, _, _, cd_disk, _, n_total, cd_size, cd_offset) = struct.unpack("<IQHHIIQQQQ", rec)
        if cd_disk >= len(parts):
            raise DownloadError(f"{parts[0]}: central directory on part {cd_disk + 1}, only {len(parts)} parts given")
        buf.seek(buf.starts[cd_disk] + cd_offset)
        cd = buf.read(cd_size)
        names = []
        p = 0
        for _ in range(n_total):
            if cd[p:p + 4] != b"PK\x01\x02":
                raise DownloadError(f"{parts[-1]}: corrupt central directory")
            (flags, method, crc, csize, usize, nlen, xlen, clen, disk, ext_attr, offset) = struct.unpack(
                "<8xHH4xIIIHHHH2xII", cd[p:p + 46])
            name = cd[p + 46:p + 46 + nlen].decode("utf-8" if flags & 0x800 else "cp437")
            extra = cd[p + 46 + nlen:p + 46 + nlen + xlen]
            p += 46 + nlen + xlen + clen
            q = 0
            while q + 4 <= len(extra):
                hid, hlen = struct.unpack("<HH", extra[q:q + 4])
                if hid == 0x0001:
                    vals = extra[q + 4:q + 4 + hlen]
                    r = 0
                    if usize == 0xFFFFFFFF:
                        usize = struct.unpack("<Q", vals[r:r + 8])[0]
                        r += 8
                    if csize == 0xFFFFFFFF:
                        csize = struct.unpack("<Q", vals[r:r + 8])[0]
                        r += 8
                    if offset == 0xFFFFFFFF:
                        offset = struct.unpack("<Q", vals[r:r + 8])[0]
                        r += 8
                    if disk == 0xFFFF:
                        disk = struct.unpack("<I", vals[r:r + 4])[0]
                q += 4 + hlen
            target = _safe_target(dest, name)
            if name.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            if flags & 0x1:
                raise DownloadError(f"{name}: encrypted zip members are not supported")
            if method not in (0, 8):
                raise DownloadError(f"{name}: unsupported zip compression method {method}")
            buf.seek(buf.starts[disk] + offset)
            local = buf.read(30)
            if local[:4] != b"PK\x03\x04":
                raise DownloadError(f"{name}: bad local header (part {disk + 1}, offset {offset})")
            lnlen, lxlen = struct.unpack("<HH", local[26:30])
            buf.seek(buf.starts[disk] + offset + 30 + lnlen + lxlen)
            target.parent.mkdir(parents=True, exist_ok=True)
            inflater = zlib.decompressobj(-15) if method == 8 else None
            check = 0
            written = 0
            left = csize
            tmp = target.with_name(target.name + ".tmp")
            with open(tmp, "wb") as out:
                while left > 0:
                    block = buf.read(min(CHUNK, left))
                    if not block:
                        raise DownloadError(f"{name}: archive ends early")
                    left -= len(block)
                    data = inflater.decompress(block) if inflater else block
                    out.write(data)
                    check = zlib.crc32(data, check)
                    written += len(data)
                if inflater:
                    data = inflater.flush()
                    out.write(data)
                    check = zlib.crc32(data, check)
                    written += len(data)
            if written != usize or (check & 0xFFFFFFFF) != crc:
                tmp.unlink()
                raise DownloadError(f"{name}: CRC or size mismatch after extraction; the archive is corrupt")
            os.replace(tmp, target)
            names.append(name)
        return names
    finally:
        buf.close()


def extract_archive(files: Sequence[str | os.PathLike], dest: str | os.PathLike) -> None:
    """Extract a zip, a split zip (several files) or a tar(.gz/.bz2/.xz) archive into ``dest`` (safely)."""
    files = [Path(f) for f in files]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if len(files) > 1:
        extract_split_zip(files, dest)
        return
    path = files[0]
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    _safe_target(dest, info.filename)
                z.extractall(dest)
            return
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as t:
                for m in t.getmembers():
                    _safe_target(dest, m.name)
                    if m.issym() or m.islnk():
                        _safe_target(dest, os.path.join(os.path.dirname(m.name), m.linkname))
                try:
                    t.extractall(dest, filter="data")
                except TypeError:  # Python without extraction filters
                    t.extractall(dest)
            return
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{path}: cannot extract ({err})") from None
    raise DownloadError(f"{path}: not a zip or tar archive")


# ----------------------------------------------------------------------------- a whole dataset
def download_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    connect_timeout: float = 10.0,
    keep_archives: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    sources: dict[str, DatasetSource] | None = None,
) -> Path:
    """Download, verify and extract dataset ``name`` under ``root``; returns the folder to pass as ``--data-root``."""
    sources = sources or DOWNLOADS
    if name not in sources:
        raise DownloadError(f"unknown dataset {name!r} (known: {', '.join(sources)})")
    src = sources[name]
    root = Path(root).expanduser()
    make_folder(root)
    data_root = root / src.data_root
    done = root / f".audiopg-download-{src.name}.complete"
    if done.exists() and (root / src.marker).exists():
        log(f"{src.title}: already present at {data_root}")
        return data_root
    log(f"{src.title} -> {root}")
    for r in src.remotes:
        log(f"  {r.url}" + (f" ({r.approx_size})" if r.approx_size else "") + (f" md5 {r.md5}" if r.md5 else ""))
    for r in src.remotes:
        download_file(r, root, connect_timeout=connect_timeout, progress=progress, log=log)
    dest = root / src.extract_to if src.extract_to else root
    for archive in src.archives:
        marker = root / f".{archive[-1]}.extracted"
        if marker.exists():
            continue
        log(f"extracting {', '.join(archive)}")
        extract_archive([root / f for f in archive], dest)
        marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    if not (root / src.marker).exists():
        raise DownloadError(f"{root}: after extraction {src.marker} is missing; the archive layout is not the "
                            "expected one")
    done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")
    if not keep_archives:
        for r in src.remotes:
            (root / r.filename).unlink(missing_ok=True)
    log(f"done: use --data-root {data_root}")
    return data_root
