"""Pack what the GPU check carries to the device machine: the evaluation audio as FLAC, and four wheels.

    python benchmarks/pack_eval_data.py [--src ../shared/data] [--dst .gpu/data] [--wheels .whl]

1. A lossless FLAC copy of ``fsdd/recordings/`` (3,000 clips at 8 kHz) and ``esc50-fold4/`` (414 clips at
   16 kHz, its ``meta/esc50.csv`` naming the ``.flac`` files, its LICENSE) in the official layouts, so that
   audiopg's loaders read them unchanged; every file is decoded again and compared sample for sample.
2. The manylinux x86_64 CPython 3.12 wheels of soundfile, soxr, cffi and pycparser, at the versions installed
   here: the GPU image lacks them, and ``import audiopg`` needs soundfile and soxr.

Prints the size of both folders and fails when together they pass ``--max-mib`` (a device call carries 64 MiB
in all, the checkout included).  Both folders are git-ignored: the recordings never enter the repository.
BENCHMARKS.md ("GPU check") says how the check is run.
"""
from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import soundfile as sf

from audiopg.core.io import atomic_copy, atomic_write_bytes, atomic_write_text
from audiopg.eval.datasets import default_data_root

WHEELS = ("soundfile", "soxr", "cffi", "pycparser")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
FLAC_SUBTYPES = ("PCM_S8", "PCM_16", "PCM_24")  # what FLAC stores losslessly


def to_flac(src: Path, dst: Path) -> None:
    """``src`` (any PCM file of at most 24 bits) as FLAC at ``dst``, checked sample for sample."""
    info = sf.info(str(src))
    if info.subtype not in FLAC_SUBTYPES:
        raise ValueError(f"{src}: {info.subtype} samples cannot go into FLAC losslessly")
    data, rate = sf.read(str(src), dtype="int32", always_2d=True)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="FLAC", subtype=info.subtype, compression_level=1.0)
    back, back_rate = sf.read(io.BytesIO(buf.getvalue()), dtype="int32", always_2d=True)
    if back_rate != rate or not np.array_equal(back, data):
        raise ValueError(f"{src}: the FLAC copy does not decode to the same samples")
    atomic_write_bytes(dst, buf.getvalue())


def pack_fsdd(src: Path, dst: Path) -> int:
    """``src/recordings/*.wav`` -> ``dst/recordings/*.flac``; returns the number of clips."""
    wavs = sorted((src / "recordings").glob("*.wav"))
    if not wavs:
        raise FileNotFoundError(f"{src / 'recordings'}: no .wav files")
    for wav in wavs:
        to_flac(wav, dst / "recordings" / f"{wav.stem}.flac")
    return len(wavs)


def pack_esc50(src: Path, dst: Path) -> int:
    """``src/audio/*.wav`` -> ``dst/audio/*.flac`` and ``meta/esc50.csv`` naming them (plus LICENSE, if any)."""
    with open(src / "meta" / "esc50.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    for row in rows:
        name = Path(row["filename"])
        to_flac(src / "audio" / name, dst / "audio" / f"{name.stem}.flac")
        row["filename"] = f"{name.stem}.flac"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(dst / "meta" / "esc50.csv", out.getvalue())
    if (src / "LICENSE").exists():
        atomic_copy(src / "LICENSE", dst / "LICENSE")
    return len(rows)


def download_wheels(folder: Path) -> list[Path]:
    """The wheels of :data:`WHEELS` for the GPU image (CPython 3.12, x86_64), pinned to the versions here."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.whl"):  # one version of each: two would stop the install there
        if old.name.split("-")[0].lower() in WHEELS:
            old.unlink()
    specs = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(folder), *specs]
    subprocess.run(cmd, check=True)
    return sorted(p for p in folder.glob("*.whl") if p.name.split("-")[0].lower() in WHEELS)


def folder_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=default_data_root(), help="shared data folder (default: %(default)s)")
    p.add_argument("--dst", type=Path, default=Path(".gpu/data"), help="FLAC copy (default: %(default)s)")
    p.add_argument("--wheels", type=Path, default=Path(".whl"), help="wheel folder (default: %(default)s)")
    p.add_argument("--max-mib", type=float, default=60.0, help="fail above this size of both (default: %(default)s)")
    args = p.parse_args(argv)
    for sub in ("fsdd", "esc50-fold4"):  # a fresh copy: no clip left over from an older one
        shutil.rmtree(args.dst / sub, ignore_errors=True)
    n_fsdd = pack_fsdd(args.src / "fsdd", args.dst / "fsdd")
    n_esc = pack_esc50(args.src / "esc50-fold4", args.dst / "esc50-fold4")
    if (args.src / "README.md").exists():  # the licences and protocols travel with the files
        atomic_copy(args.src / "README.md", args.dst / "README.md")
    wheels = download_wheels(args.wheels)
    mib = {f: folder_bytes(f) / 2**20 for f in (args.dst, args.wheels)}
    total = sum(mib.values())
    print(f"{args.dst}: {n_fsdd} FSDD + {n_esc} ESC-50 clips as FLAC, {mib[args.dst]:.1f} MiB")
    print(f"{args.wheels}: {', '.join(w.name for w in wheels)}, {mib[args.wheels]:.1f} MiB")
    print(f"total {total:.1f} MiB (limit {args.max_mib:g} MiB)")
    if total > args.max_mib:
        print(f"error: {total:.1f} MiB is over the {args.max_mib:g} MiB a device call can carry here", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
