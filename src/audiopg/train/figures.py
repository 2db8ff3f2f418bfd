"""The reconstruction figure of a run: a few fresh clips, masked, and what the model makes of them."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from audiopg.core.io import atomic_write_bytes
from audiopg.model import MaskedAutoencoder
from audiopg.train.data import SynthSpectrograms
from audiopg.train.metrics import open_tensorboard
from audiopg.train.run_dir import TB_DIR, derive_seed

__all__ = ["save_reconstruction_figure", "write_reconstructions"]


def write_reconstructions(path: Path, model: MaskedAutoencoder, data: SynthSpectrograms, seed: int,
                          step: int) -> Path:
    """4 clips drawn from seeds of their own (the same clips and masks at every step of a run), reconstructed;
    also an image in the run's TensorBoard log (tag ``reconstructions``) when the extra is installed."""
    gen = data.generator(derive_seed(seed, 0, "reconstructions"))
    mask_gen = torch.Generator(device=data.device).manual_seed(derive_seed(seed, 0, "reconstructions-mask"))
    was_training = model.training
    model.eval()
    try:
        x = data.batch(4, gen)
        recon = model.reconstruct(x, generator=mask_gen)
    finally:
        model.train(was_training)
    png = save_reconstruction_figure(path, x, recon.spec, recon.mask,
                                     title=f"step {step}: original | masked input | reconstruction")
    tb = open_tensorboard(Path(path).parent / TB_DIR)
    if tb is not None:
        from matplotlib.image import imread

        tb.add_image("reconstructions", imread(io.BytesIO(png), format="png"), step, dataformats="HWC")
        tb.close()
    return path


def save_reconstruction_figure(path: str | os.PathLike, spec: torch.Tensor, recon: torch.Tensor,
                               mask: torch.Tensor, title: str = "") -> bytes:
    """A PNG with one row per clip: the input, the input with masked patches blanked, the reconstruction;
    returns its bytes."""
    import matplotlib  # slow to import, and needed only at the end of a run
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec, recon, mask = (t.detach().float().cpu() for t in (spec, recon, mask))
    n = spec.shape[0]
    fig = Figure(figsize=(12, 2.2 * n + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.5 / (2.2 * n + 0.6), top=1 - 0.55 / (2.2 * n + 0.6),
                        hspace=0.25, wspace=0.04)
    lo, hi = float(spec.min()), float(spec.max())
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="0.8")
    for i in range(n):
        masked = spec[i].clone()
        masked[mask[i] > 0.5] = float("nan")
        panels = ((spec[i], "original"), (masked, "masked input"), (recon[i], "reconstruction"))
        for j, (img, name) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(img.T.numpy(), origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap=cmap,
                      interpolation="nearest")
            ax.set_title(f"clip {i + 1}: {name}", fontsize=9, pad=3)
            ax.tick_params(labelsize=7)
        axes[i][0].set_ylabel("mel bin", fontsize=8)
    for j in range(3):
        axes[n - 1][j].set_xlabel("frame", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    atomic_write_bytes(path, buf.getvalue())
    return buf.getvalue()
