"""Model configuration: a frozen, validated dataclass plus named presets.

All presets use 16x16 patches over 128 mel bins at a 10 ms hop, so one patch
covers 160 ms x 16 mel bins; ``patch_frames`` makes patches oblong (e.g. 8
frames x 32 bins: 80 ms, the same 256 values per patch).  ``num_frames`` is the
*training* clip length; the encoder itself accepts any multiple of
``patch_t`` frames (see :class:`audiopg.model.vit.ViTEncoder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audiopg.core.config import check_range
from audiopg.core.errors import ConfigError


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {value!r}")


def _check_heads(dim_key: str, dim: int, heads_key: str, heads: int) -> None:
    if dim % heads:
        raise ConfigError(dim_key, f"{dim} is not divisible by {heads_key}={heads}")
    if dim % 4:
        # the 2-D sin-cos position embedding gives dim/2 channels to each axis, as sin/cos pairs
        raise ConfigError(dim_key, f"must be a multiple of 4 for the 2-D sin-cos position embedding, got {dim}")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of an AudioMAE-style ViT masked autoencoder over (T frames, F mel bins) log-mel inputs."""

    num_frames: int  # input frames T of a training clip (10 ms hop); must be a multiple of patch_t
    num_mel_bins: int = 128  # mel bins F of the input; must be a multiple of patch_size
    patch_size: int = 16  # patch side in mel bins, and in frames unless patch_frames is set
    patch_frames: int | None = None  # patch length in frames (10 ms each); None: patch_size (square patches)
    embed_dim: int  # encoder token width
    depth: int  # number of encoder transformer blocks
    num_heads: int  # encoder attention heads (embed_dim must divide evenly)
    mlp_ratio: float = 4.0  # MLP hidden width as a multiple of the token width (encoder and decoder)
    decoder_embed_dim: int  # decoder token width
    decoder_depth: int  # number of decoder transformer blocks (0 = linear decoder)
    decoder_num_heads: int  # decoder attention heads (decoder_embed_dim must divide evenly)
    mask_ratio: float = 0.75  # fraction of patches hidden from the encoder during pre-training
    norm_pix_loss: bool = True  # regress per-patch normalized pixels (mean 0, var 1 over each patch)
    drop_path: float = 0.0  # stochastic-depth rate of the last encoder block (linear ramp from 0)
    qkv_bias: bool = True  # use a bias in the attention q/k/v projection

    def __post_init__(self) -> None:
        _check_int("patch_size", self.patch_size, 1)
        if self.patch_frames is not None:
            _check_int("patch_frames", self.patch_frames, 1)
        time_key = "patch_size" if self.patch_frames is None else "patch_frames"
        for key, side, side_key in (("num_frames", self.patch_t, time_key),
                                    ("num_mel_bins", self.patch_f, "patch_size")):
            value = getattr(self, key)
            _check_int(key, value, side)
            if value % side:
                raise ConfigError(key, f"{value} is not a multiple of {side_key}={side}")
        for key in ("embed_dim", "num_heads", "depth", "decoder_embed_dim", "decoder_num_heads"):
            _check_int(key, getattr(self, key), 1)
        _check_int("decoder_depth", self.decoder_depth, 0)
        _check_heads("embed_dim", self.embed_dim, "num_heads", self.num_heads)
        _check_heads("decoder_embed_dim", self.decoder_embed_dim, "decoder_num_heads", self.decoder_num_heads)
        check_range("mlp_ratio", self.mlp_ratio, 0.0)
        if self.mlp_ratio <= 0 or int(self.embed_dim * self.mlp_ratio) < 1:
            raise ConfigError("mlp_ratio", f"must give a positive MLP width, got {self.mlp_ratio}")
        check_range("mask_ratio", self.mask_ratio, 0.0)
        if self.mask_ratio >= 1.0:
            raise ConfigError("mask_ratio", f"must be in [0, 1), got {self.mask_ratio}")
        if round(self.num_patches * (1.0 - self.mask_ratio)) >= self.num_patches:  # as model/mae.py keeps
            raise ConfigError("mask_ratio", f"{self.mask_ratio} masks no patch of the {self.num_patches} of a clip, "
                                            f"so pre-training would learn nothing (loss and gradient 0); use a ratio "
                                            f"above {0.5 / self.num_patches:.4g}")
        check_range("drop_path", self.drop_path, 0.0)
        if self.drop_path >= 1.0:
            raise ConfigError("drop_path", f"must be in [0, 1), got {self.drop_path}")
        _check_bool("norm_pix_loss", self.norm_pix_loss)
        _check_bool("qkv_bias", self.qkv_bias)

    # ------------------------------------------------------------------ derived sizes
    @property
    def patch_t(self) -> int:
        """Frames per patch (along time)."""
        return self.patch_size if self.patch_frames is None else self.patch_frames

    @property
    def patch_f(self) -> int:
        """Mel bins per patch (along frequency)."""
        return self.patch_size

    @property
    def patch_pixels(self) -> int:
        """Values per patch, ``patch_t * patch_f``."""
        return self.patch_t * self.patch_f

    @property
    def grid_t(self) -> int:
        """Patches along time for a ``num_frames`` clip."""
        return self.num_frames // self.patch_t

    @property
    def grid_f(self) -> int:
        """Patches along frequency."""
        return self.num_mel_bins // self.patch_f

    @property
    def num_patches(self) -> int:
        """Patches in a ``num_frames`` clip (tokens before masking, CLS excluded)."""
        return self.grid_t * self.grid_f


MODEL_PRESETS: dict[str, ModelConfig] = {
    # 2.56 s clips; ~2.7 M encoder params: smoke tests and CPU runs
    "tiny": ModelConfig(
        num_frames=256, embed_dim=192, depth=6, num_heads=3,
        decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4,
    ),
    # 5.12 s clips; ~21 M encoder params (ViT-S)
    "small": ModelConfig(
        num_frames=512, embed_dim=384, depth=12, num_heads=6,
        decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8,
    ),
    # 10.24 s clips; ~85 M encoder params (ViT-B, as AudioMAE)
    "base": ModelConfig(
        num_frames=1024, embed_dim=768, depth=12, num_heads=12,
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
    ),
}


def model_preset(name: str) -> ModelConfig:
    """The preset called ``name``; an unknown name raises ConfigError listing the presets."""
    try:
        return MODEL_PRESETS[name]
    except (KeyError, TypeError):
        raise ConfigError("model.preset", f"unknown model preset {name!r} (known: {', '.join(MODEL_PRESETS)})") from None
