"""Masked autoencoder (AudioMAE style) over log-mel spectrograms.

The encoder sees only a random ``1 - mask_ratio`` share of the patches; a
light decoder gets the encoded visible tokens plus a shared learned mask token
at every hidden position (each with its fixed sin-cos position embedding) and
predicts the ``patch_t * patch_f`` pixels of every patch.  The loss is the MSE on the
masked patches only, against per-patch normalized pixels when
``norm_pix_loss``.  Masking is unstructured (per-patch, per-sample).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig
from .vit import (
    Block,
    SinCosPosEmbed,
    ViTEncoder,
    as_spectrogram_batch,
    init_mae_weights,
    param_groups,
)

NORM_PIX_EPS = 1e-6


class MAEOutput(NamedTuple):
    loss: torch.Tensor  # scalar: mean squared error over the masked patches
    pred: torch.Tensor  # (B, L, pt*pf) predicted pixels of every patch (normalized space when norm_pix_loss)
    mask: torch.Tensor  # (B, L) float, 1 = masked (hidden from the encoder), 0 = visible


class Reconstruction(NamedTuple):
    spec: torch.Tensor  # (B, T, F) reconstructed spectrogram in input units (every patch predicted)
    mask: torch.Tensor  # (B, T, F) float, 1 where the patch was masked


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking of a token sequence ``x`` of shape (B, L, ...).

    Keeps ``K = round(L * (1 - mask_ratio))`` tokens (at least one) chosen by
    sorting uniform noise.  All randomness comes from ``torch.rand`` with
    ``generator`` (``None`` = the global RNG); the noise is drawn on the
    generator's device and moved to ``x``'s, so a CPU generator gives the same
    masks on CPU and CUDA.

    Returns ``(x_kept (B, K, ...), mask (B, L) float with 1 = masked,
    ids_restore (B, L), ids_keep (B, K))``; ``ids_keep`` is sorted per sample
    ascending by noise, ``ids_restore`` undoes the shuffle.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    b, length = x.shape[:2]
    keep = max(1, int(round(length * (1.0 - mask_ratio))))
    noise_device = generator.device if generator is not None else x.device
    noise = torch.rand(b, length, generator=generator, device=noise_device).to(x.device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    idx = ids_keep.view(b, keep, *([1] * (x.dim() - 2))).expand(b, keep, *x.shape[2:])
    x_kept = torch.gather(x, 1, idx)
    mask = torch.ones(b, length, device=x.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return x_kept, mask, ids_restore, ids_keep


class MaskedAutoencoder(nn.Module):
    """ViT masked autoencoder: ``encoder`` (:class:`ViTEncoder`) plus a small transformer decoder.

    Like the encoder it accepts any clip length that is a multiple of
    ``patch_t`` (fixed sin-cos position embeddings in both halves).
    After pre-training only ``encoder`` is kept.
    """

    def __init__(self, config: ModelConfig, pred_dim: int | None = None):
        super().__init__()
        self.config = config
        c = config
        self.encoder = ViTEncoder(c)
        self.decoder_embed = nn.Linear(c.embed_dim, c.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_embed_dim))
        self.decoder_pos_embed = SinCosPosEmbed(c.decoder_embed_dim)
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_embed_dim, c.decoder_num_heads, c.mlp_ratio, c.qkv_bias) for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_embed_dim, eps=1e-6)
        # per patch: its pt*pf pixels, or ``pred_dim`` values (the latent objective predicts embed_dim features)
        self.decoder_pred = nn.Linear(c.decoder_embed_dim, pred_dim or c.patch_pixels)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_mae_weights)

    # ------------------------------------------------------------------ patches
    def patchify(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, T, F) or (B, 1, T, F) -> (B, L, pt*pf) with ``pt, pf = patch_t, patch_f``.

        Patch ``t * grid_f + f`` (time-major, as the patch embedding) holds
        frames ``[t*pt, (t+1)*pt)`` x bins ``[f*pf, (f+1)*pf)`` flattened time-major
        (pixel ``i * pf + j`` = frame ``t*pt + i``, bin ``f*pf + j``), the same
        layout as the patch-embedding convolution kernel.
        """
        x = as_spectrogram_batch(spec, self.config)[:, 0]
        b, t, f = x.shape
        pt, pf = self.config.patch_t, self.config.patch_f
        x = x.reshape(b, t // pt, pt, f // pf, pf).permute(0, 1, 3, 2, 4)
        return x.reshape(b, (t // pt) * (f // pf), pt * pf)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, pt*pf) -> (B, T, F), inverse of :meth:`patchify` (T = L / grid_f * pt)."""
        pt, pf = self.config.patch_t, self.config.patch_f
        grid_f = self.config.grid_f
        if patches.dim() != 3 or patches.shape[2] != pt * pf or patches.shape[1] % grid_f or patches.shape[1] == 0:
            raise ValueError(
                f"expected patches of shape (B, L, {pt * pf}) with L a multiple of grid_f={grid_f}, "
                f"got shape {tuple(patches.shape)}"
            )
        b, length, _ = patches.shape
        grid_t = length // grid_f
        x = patches.reshape(b, grid_t, grid_f, pt, pf).permute(0, 1, 3, 2, 4)
        return x.reshape(b, grid_t * pt, grid_f * pf)

    def targets(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Regression targets ``(B, L, p*p)`` and each patch's ``(mean, std)`` of shape (B, L, 1).

        With ``norm_pix_loss`` the target is ``(x - mean) / sqrt(var + 1e-6)``
        over the patch's pixels (unbiased variance, as MAE); otherwise the raw
        pixels with mean 0 and std 1.  Computed in float32.
        """
        target = self.patchify(spec).float()
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
            return (target - mean) / std, mean, std
        ones = torch.ones_like(target[..., :1])
        return target, ones * 0, ones

    def forward_loss(self, spec: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE between ``pred`` (B, L, p*p) and the targets of ``spec``.

        Visible patches do not count.  If nothing is masked the loss is 0.
        """
        target, _, _ = self.targets(spec)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # (B, L)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum().clamp(min=1.0)

    # ------------------------------------------------------------------ model
    def forward_encoder(
        self, spec: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode the visible patches: ``(latent (B, 1 + K, D), mask (B, L), ids_restore (B, L))``."""
        tokens = self.encoder.patch_tokens(spec)
        kept, mask, ids_restore, _ = random_masking(tokens, mask_ratio, generator)
        return self.encoder.forward_tokens(kept), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor, grid_t: int) -> torch.Tensor:
        """Predict every patch from the encoded visible tokens: (B, 1 + K, D) -> (B, L, p*p)."""
        x = self.decoder_embed(latent)
        b, length = ids_restore.shape
        n_mask = length - (x.shape[1] - 1)
        mask_tokens = self.mask_token.to(x.dtype).expand(b, n_mask, -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # shuffled order: kept first
        patches = torch.gather(patches, 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))  # unshuffle
        patches = patches + self.decoder_pos_embed(grid_t, self.config.grid_f, patches.device).to(patches.dtype)
        x = torch.cat([x[:, :1], patches], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]

    def predict(
        self, spec: torch.Tensor, generator: torch.Generator | None = None, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask, encode, decode: ``(pred (B, L, pt*pf), mask (B, L))`` of a (B, 1, T, F) spectrogram batch."""
        ratio = self.config.mask_ratio if mask_ratio is None else float(mask_ratio)
        grid_t = spec.shape[2] // self.config.patch_t
        latent, mask, ids_restore = self.forward_encoder(spec, ratio, generator)
        return self.forward_decoder(latent, ids_restore, grid_t), mask

    def forward(
        self, spec: torch.Tensor, generator: torch.Generator | None = None, mask_ratio: float | None = None
    ) -> MAEOutput:
        """Mask, encode, decode, score.  ``spec``: (B, T, F) or (B, 1, T, F), T a multiple of patch_t.

        ``mask_ratio`` defaults to ``config.mask_ratio``; ``generator`` drives the masking.
        """
        spec = as_spectrogram_batch(spec, self.config)
        pred, mask = self.predict(spec, generator, mask_ratio)
        loss = self.forward_loss(spec, pred, mask)
        return MAEOutput(loss, pred, mask)

    @torch.no_grad()
    def reconstruct(
        self, spec: torch.Tensor, generator: torch.Generator | None = None, mask_ratio: float | None = None
    ) -> Reconstruction:
        """Reconstructed spectrogram (B, T, F) and the mask on the spectrogram grid (B, T, F), for plots.

        Predictions are mapped back to input units with each patch's own target
        mean/std (when ``norm_pix_loss``).  Runs under ``no_grad`` in the
        module's current train/eval mode (call ``.eval()`` first for plots).
        """
        spec = as_spectrogram_batch(spec, self.config)
        pred, mask = self.predict(spec, generator, mask_ratio)
        _, mean, std = self.targets(spec)
        recon = self.unpatchify(pred.float() * std + mean)
        mask = self.unpatchify(mask[:, :, None].expand(-1, -1, self.config.patch_pixels).float())
        return Reconstruction(recon, mask)

    # ------------------------------------------------------------------ training helpers
    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups for pre-training: no decay for biases, norms, cls and mask tokens."""
        return param_groups(self.named_parameters(), weight_decay)
