"""Downloads: fast offline failure naming the URL, resume with HTTP Range, MD5 checks, archive extraction.

Everything runs against localhost: a closed port for the offline case, a tiny in-process HTTP server
(with Range support) for the rest.  Nothing here reaches an outside address.
"""
from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import zipfile

import pytest

from audiopg.eval.download import (
    DOWNLOADS,
    DatasetSource,
    DownloadError,
    Remote,
    download_dataset,
    download_file,
    extract_archive,
    extract_split_zip,
)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connections are refused at once
    return port


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    honour_range = True
    cut_after: int | None = None  # close the first full response after this many bytes
    requests: list[tuple[str, str | None]] = []

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        body = self.files.get(self.path)
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        part = body[start:]
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        if type(self).cut_after is not None and start == 0:
            self.wfile.write(part[: type(self).cut_after])
            type(self).cut_after = None
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)


@pytest.fixture
def server():
    _Handler.files = {}
    _Handler.honour_range = True
    _Handler.cut_after = None
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def quiet(msg: str) -> None:
    pass


# ----------------------------------------------------------------------------- offline
def test_offline_fails_fast_with_the_url(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/ESC-50-master.zip"
    t0 = time.time()
    with pytest.raises(DownloadError) as err:
        download_file(Remote(url, "ESC-50-master.zip"), tmp_path, connect_timeout=10, progress=False, log=quiet)
    assert time.time() - t0 < 10
    assert url in str(err.value) and "cannot connect" in str(err.value)
    assert not (tmp_path / "ESC-50-master.zip").exists()


def test_offline_dataset_command_fails_with_the_url(tmp_path, capsys):
    import argparse

    from audiopg.cli import eval as eval_cli

    port = closed_port()
    src = DOWNLOADS["fsdd"]
    local = {"fsdd": DatasetSource(src.name, src.title, (Remote(f"http://127.0.0.1:{port}/fsdd.zip", "fsdd.zip"),),
                                   (("fsdd.zip",),), "", src.marker, src.data_root)}
    with pytest.raises(DownloadError, match=f"127.0.0.1:{port}/fsdd.zip"):
        download_dataset("fsdd", tmp_path, sources=local, progress=False, log=quiet)
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["download", "--list"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "9aa69802bbf37fb986f71ec1483a196e" in out and "zenodo.org/records/4060432" in out


def test_official_sources_are_complete():
    assert set(DOWNLOADS) == {"esc50", "us8k", "scv2", "fsd50k", "fsdd"}
    fsd = DOWNLOADS["fsd50k"]
    assert all(r.md5 and len(r.md5) == 32 for r in fsd.remotes)
    names = {r.filename for r in fsd.remotes}
    assert {f for a in fsd.archives for f in a} == names
    assert DOWNLOADS["scv2"].remotes[0].url.endswith("speech_commands_v0.02.tar.gz")
    assert all(r.url.startswith("https://") for s in DOWNLOADS.values() for r in s.remotes)


# ----------------------------------------------------------------------------- fetching
def test_download_verifies_md5_and_resumes_with_range(tmp_path, server):
    base, handler = server
    body = os.urandom(300_000)
    handler.files["/data.bin"] = body
    md5 = hashlib.md5(body).hexdigest()
    # a previous run left half of the file
    (tmp_path / "data.bin.part").write_bytes(body[:120_000])
    path = download_file(Remote(f"{base}/data.bin", "data.bin", md5), tmp_path, progress=False, log=quiet)
    assert path.read_bytes() == body
    assert not (tmp_path / "data.bin.part").exists()
    assert handler.requests[-1] == ("/data.bin", "bytes=120000-")
    # already there: nothing fetched
    n = len(handler.requests)
    download_file(Remote(f"{base}/data.bin", "data.bin", md5), tmp_path, progress=False, log=quiet)
    assert len(handler.requests) == n


def test_interrupted_transfer_is_resumed(tmp_path, server):
    base, handler = server
    body = os.urandom(200_000)
    handler.files["/x.bin"] = body
    handler.cut_after = 50_000
    path = download_file(Remote(f"{base}/x.bin", "x.bin", hashlib.md5(body).hexdigest()), tmp_path,
                         progress=False, log=quiet)
    assert path.read_bytes() == body
    assert any(r == ("/x.bin", "bytes=50000-") for r in handler.requests)


def test_server_ignoring_range_restarts_cleanly(tmp_path, server):
    base, handler = server
    body = os.urandom(50_000)
    handler.files["/y.bin"] = body
    handler.honour_range = False
    (tmp_path / "y.bin.part").write_bytes(b"stale bytes")
    path = download_file(Remote(f"{base}/y.bin", "y.bin", hashlib.md5(body).hexdigest()), tmp_path,
                         progress=False, log=quiet)
    assert path.read_bytes() == body


def test_md5_mismatch_raises_and_deletes(tmp_path, server):
    base, handler = server
    handler.files["/z.bin"] = b"not what was published"
    with pytest.raises(DownloadError, match="MD5 mismatch"):
        download_file(Remote(f"{base}/z.bin", "z.bin", "0" * 32), tmp_path, progress=False, log=quiet)
    assert not (tmp_path / "z.bin").exists() and not (tmp_path / "z.bin.part").exists()


def test_http_error_names_the_url(tmp_path, server):
    base, _ = server
    with pytest.raises(DownloadError, match="404"):
        download_file(Remote(f"{base}/missing.zip", "missing.zip"), tmp_path, progress=False, log=quiet)


# ----------------------------------------------------------------------------- extraction
def test_dataset_download_extracts_and_checks_layout(tmp_path, server):
    base, handler = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("free-spoken-digit-dataset-master/recordings/0_theo_0.wav", b"RIFF....")
        z.writestr("free-spoken-digit-dataset-master/README.md", b"fsdd")
    handler.files["/fsdd.zip"] = buf.getvalue()
    src = DOWNLOADS["fsdd"]
    local = {"fsdd": DatasetSource(src.name, src.title, (Remote(f"{base}/fsdd.zip", "fsdd.zip"),), (("fsdd.zip",),),
                                   "", src.marker, src.data_root)}
    root = download_dataset("fsdd", tmp_path, sources=local, progress=False, log=quiet)
    assert root == tmp_path / "free-spoken-digit-dataset-master"
    assert (root / "recordings" / "0_theo_0.wav").exists()
    # a second call finds the data and fetches nothing
    n = len(handler.requests)
    download_dataset("fsdd", tmp_path, sources=local, progress=False, log=quiet)
    assert len(handler.requests) == n
    # an archive without the expected layout is reported
    bad = {"fsdd": DatasetSource(src.name, src.title, (Remote(f"{base}/fsdd.zip", "other.zip"),), (("other.zip",),),
                                 "", "nothing/here", "")}
    with pytest.raises(DownloadError, match="nothing/here"):
        download_dataset("fsdd", tmp_path / "b", sources=bad, progress=False, log=quiet)


def test_tar_gz_extraction_and_path_traversal_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        data = b"hello"
        info = tarfile.TarInfo("yes/a_nohash_0.wav")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    (tmp_path / "ok.tar.gz").write_bytes(buf.getvalue())
    extract_archive([tmp_path / "ok.tar.gz"], tmp_path / "out")
    assert (tmp_path / "out" / "yes" / "a_nohash_0.wav").read_bytes() == b"hello"
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("../evil.txt", b"x")
    (tmp_path / "evil.zip").write_bytes(zbuf.getvalue())
    with pytest.raises(DownloadError, match="outside"):
        extract_archive([tmp_path / "evil.zip"], tmp_path / "out2")
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.skipif(shutil.which("zip") is None, reason="the zip tool is needed to build a split-archive fixture")
@pytest.mark.parametrize("flags", [[], ["-fz"]], ids=["zip", "zip64"])
def test_split_zip_like_fsd50k_is_extracted(tmp_path, flags):
    src = tmp_path / "FSD50K.dev_audio"
    src.mkdir()
    files = {f"{i}.wav": os.urandom(40_000) for i in range(6)}  # incompressible: the archive spans parts
    files["labels.txt"] = b"Bark,Dog\n" * 2000  # compressible: deflated member
    for name, data in files.items():
        (src / name).write_bytes(data)
    subprocess.run(["zip", "-q", "-r", *flags, "-s", "64k", "FSD50K.dev_audio.zip", "FSD50K.dev_audio"],
                   cwd=tmp_path, check=True)
    parts = sorted(tmp_path.glob("FSD50K.dev_audio.z0*")) + [tmp_path / "FSD50K.dev_audio.zip"]
    assert len(parts) >= 3
    names = extract_split_zip(parts, tmp_path / "out")
    assert len([n for n in names if not n.endswith("/")]) == len(files)
    for name, data in files.items():
        assert (tmp_path / "out" / "FSD50K.dev_audio" / name).read_bytes() == data
    # a damaged part is detected
    damaged = bytearray(parts[1].read_bytes())
    damaged[1000:1010] = b"\x00" * 10
    parts[1].write_bytes(bytes(damaged))
    with pytest.raises(DownloadError):
        extract_split_zip(parts, tmp_path / "out3")
