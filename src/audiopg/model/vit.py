"""ViT encoder over log-mel spectrograms (AudioMAE style).

Input is a log-mel spectrogram ``(B, T, F)`` (or ``(B, 1, T, F)``) with ``T``
frames and ``F`` mel bins.  It is cut into non-overlapping ``p x p`` patches by
a strided convolution; tokens are ordered **time-major**: token
``t * grid_f + f`` is the patch covering frames ``[t*p, (t+1)*p)`` and mel bins
``[f*p, (f+1)*p)``.  Every token gets a fixed 2-D sin-cos position embedding, a
CLS token (without position embedding) is prepended, and a stack of pre-norm
transformer blocks follows.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

LN_EPS = 1e-6


# ----------------------------------------------------------------------------- position embeddings
def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) float64 positions -> (N, dim): [sin(pos * w_i), cos(pos * w_i)], w_i = 10000^(-i / (dim/2))."""
    half = dim // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64, device="cpu") / half))
    angles = positions[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_t: int, grid_f: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding of a (grid_t, grid_f) patch grid, shape (grid_t * grid_f, dim).

    Row ``t * grid_f + f`` (time-major, matching the patch embedding) is the
    concatenation of a 1-D sin-cos embedding of the time index ``t`` in the
    first ``dim / 2`` channels and of the frequency index ``f`` in the last
    ``dim / 2``.  Values lie in [-1, 1].  Because the time code depends on
    ``t`` alone, the first ``n * grid_f`` rows are the same for every
    ``grid_t >= n``.  Computed in float64 on the CPU, returned as float32.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    if grid_t < 1 or grid_f < 1:
        raise ValueError(f"empty patch grid ({grid_t}, {grid_f})")
    t = torch.arange(grid_t, dtype=torch.float64, device="cpu")
    f = torch.arange(grid_f, dtype=torch.float64, device="cpu")
    emb_t = _sincos_1d(dim // 2, t)  # (grid_t, dim/2)
    emb_f = _sincos_1d(dim // 2, f)  # (grid_f, dim/2)
    emb = torch.cat(
        [
            emb_t[:, None, :].expand(grid_t, grid_f, dim // 2),
            emb_f[None, :, :].expand(grid_t, grid_f, dim // 2),
        ],
        dim=2,
    )
    return emb.reshape(grid_t * grid_f, dim).float()


class SinCosPosEmbed(nn.Module):
    """Fixed 2-D sin-cos position embeddings, built on demand per (patch grid, device) and cached.

    Holds no parameters or buffers: nothing appears in state dicts, and
    meta-device construction followed by ``to_empty`` cannot leave garbage in it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self._cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def forward(self, grid_t: int, grid_f: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(grid_t * grid_f, dim) float32 embedding on ``device``."""
        device = torch.device(device)
        key = (int(grid_t), int(grid_f), device)
        emb = self._cache.get(key)
        if emb is None:
            emb = sincos_pos_embed_2d(self.dim, grid_t, grid_f).to(device)
            if device.type != "meta":
                self._cache[key] = emb
        return emb

    def extra_repr(self) -> str:
        return f"dim={self.dim}, fixed"


# ----------------------------------------------------------------------------- building blocks
class PatchEmbed(nn.Module):
    """(B, 1, T, F) -> (B, (T/pt) * (F/pf), D) tokens, time-major, via a pt x pf stride-(pt, pf) convolution."""

    def __init__(self, patch_t: int, patch_f: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(patch_t, patch_f), stride=(patch_t, patch_f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, T/pt, F/pf)
        return x.flatten(2).transpose(1, 2)  # (B, L, D), index t * grid_f + f


class DropPath(nn.Module):
    """Stochastic depth: in training, zero the whole residual branch of a sample with probability ``p``
    and scale survivors by ``1 / (1 - p)``; identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, hd)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic-depth rule: block i drops with probability ``rate * i / (depth - 1)`` (0 for the first)."""
    if depth <= 1:
        return [0.0] * depth
    return [rate * i / (depth - 1) for i in range(depth)]


def init_mae_weights(module: nn.Module) -> None:
    """MAE initialisation: xavier-uniform Linear weights with zero bias, LayerNorm ones/zeros."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def as_spectrogram_batch(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Check a (B, T, F) or (B, 1, T, F) spectrogram batch against ``cfg`` and return it as (B, 1, T, F).

    T may be any positive multiple of ``patch_t`` (frames per patch); F must equal ``num_mel_bins``.
    """
    shape = tuple(x.shape)
    p = cfg.patch_t
    if x.dim() == 3:
        x = x.unsqueeze(1)
    elif not (x.dim() == 4 and x.shape[1] == 1):
        raise ValueError(f"expected a spectrogram batch of shape (B, T, F) or (B, 1, T, F), got shape {shape}")
    _, _, t, f = x.shape
    if f != cfg.num_mel_bins:
        raise ValueError(
            f"spectrogram of shape {shape} has {f} mel bins, the model expects num_mel_bins={cfg.num_mel_bins}"
        )
    if t < p or t % p:
        raise ValueError(
            f"spectrogram of shape {shape} has {t} frames; the frame count must be a positive multiple of "
            f"the patch length of {p} frames (e.g. {max(p, t // p * p)} or {(t // p + 1) * p})"
        )
    if x.shape[0] == 0:
        raise ValueError(f"empty spectrogram batch of shape {shape}")
    return x


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(("cls_token", "mask_token"))


def param_groups(
    named_params: Iterable[tuple[str, torch.Tensor]],
    weight_decay: float,
    layer_id=None,
    num_layers: int | None = None,
    layer_decay: float | None = None,
) -> list[dict]:
    """Optimizer parameter groups: biases, norm weights and cls/mask tokens get no weight decay.

    With ``layer_id``/``num_layers``/``layer_decay`` given, groups are further split by
    layer and carry ``lr_scale = layer_decay ** (num_layers - layer_id(name))`` (the
    training loop multiplies each group's lr by it).  Frozen parameters are skipped.
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        no_decay = _no_decay(name, param)
        lid = layer_id(name) if (layer_decay is not None and layer_id is not None) else 0
        key = (lid, no_decay)
        if key not in groups:
            group = {"params": [], "param_names": [], "weight_decay": 0.0 if no_decay else float(weight_decay)}
            if layer_decay is not None and layer_id is not None:
                group["lr_scale"] = float(layer_decay) ** ((num_layers or 0) - lid)
                group["layer_id"] = lid
            groups[key] = group
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


# ----------------------------------------------------------------------------- encoder
class ViTEncoder(nn.Module):
    """ViT encoder of log-mel spectrograms ``(B, T, F)`` -> tokens ``(B, 1 + L, D)`` (CLS first).

    Clip length.  Position embeddings are *fixed* 2-D sin-cos functions of the
    (time, frequency) patch index, computed for whatever grid the input has
    (and cached per grid size).  There are no learned position parameters, so
    nothing has to be interpolated when the clip length changes
    (``interpolate_pos_embed`` is unnecessary): a checkpoint trained on
    ``num_frames`` runs unchanged on any ``T`` that is a multiple of
    ``patch_t``.  Since tokens are time-major and the time code depends only
    on the time index, the embeddings of the first ``n`` time steps are the
    same for every grid length -- a window cut from long audio sees exactly the
    positions it was trained with.  ``F`` must equal ``num_mel_bins``.

    Layer-wise probing: ``forward_features(..., return_layers=True)`` also
    returns the hidden state after every block; ``embed(x, layer=i)`` pools one
    of them.  Training helpers: :meth:`param_groups` and :meth:`layer_id`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed_dim = c.embed_dim
        self.depth = c.depth
        self.patch_embed = PatchEmbed(c.patch_t, c.patch_f, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = SinCosPosEmbed(c.embed_dim)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, dp)
            for dp in drop_path_rates(c.drop_path, c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=LN_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # the patch conv is a Linear on flattened patches
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_mae_weights)
        init_mae_weights(self.norm)

    # ------------------------------------------------------------------ pieces
    def pos_embed_for_grid(self, grid_t: int, grid_f: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Position embeddings ``(grid_t * grid_f, D)`` float32 of a patch grid (time-major rows).

        On ``device`` (default: the encoder's).  Cached per grid and device: do not modify in place.
        """
        return self.pos_embed(grid_t, grid_f, self.cls_token.device if device is None else device)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embeddings plus position embeddings, ``(B, L, D)``, no CLS, nothing masked."""
        x = as_spectrogram_batch(x, self.config)
        grid_t, grid_f = x.shape[2] // self.config.patch_t, x.shape[3] // self.config.patch_f
        tokens = self.patch_embed(x)
        return tokens + self.pos_embed_for_grid(grid_t, grid_f, tokens.device).to(tokens.dtype)

    def forward_tokens(
        self, tokens: torch.Tensor, return_layers: bool = False, stop_after: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run (already position-embedded, possibly masked) patch tokens ``(B, K, D)`` through the encoder.

        Prepends CLS, applies the blocks and the final LayerNorm.  ``stop_after=i``
        stops after block ``i`` (the normed output is then not computed; returns
        ``(None, layers)``) -- used by :meth:`embed` for cheap layer probing.
        """
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        layers: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if return_layers or stop_after is not None:
                layers.append(x)
            if stop_after is not None and i == stop_after:
                return None, layers
        out = self.norm(x)
        return (out, layers) if return_layers else out

    # ------------------------------------------------------------------ public API
    def forward_features(
        self, x: torch.Tensor, mask_ids_keep: torch.Tensor | None = None, return_layers: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Normed token sequence ``(B, 1 + K, D)``, CLS first.

        ``mask_ids_keep``: optional ``(B, K)`` long tensor of patch indices
        (time-major, in ``[0, L)``) to keep; the other patches are dropped before
        the first block (MAE masking).  Without it all ``L`` patches are kept.
        With ``return_layers`` returns ``(tokens, layers)`` where ``layers[i]`` is
        the hidden state after block ``i`` (before the final norm).
        """
        tokens = self.patch_tokens(x)
        if mask_ids_keep is not None:
            tokens = gather_tokens(tokens, mask_ids_keep)
        return self.forward_tokens(tokens, return_layers=return_layers)

    def forward(
        self, x: torch.Tensor, mask_ids_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Same as :meth:`forward_features` without the per-layer states."""
        return self.forward_features(x, mask_ids_keep)

    def embed(self, x: torch.Tensor, layer: int = -1, pool: str = "mean") -> torch.Tensor:
        """One ``(B, D)`` vector per clip.

        ``layer=-1``: the final (normed) encoder output; ``layer=i`` with
        ``0 <= i < depth``: the hidden state after block ``i`` (un-normed; later
        blocks are not run).  ``pool="mean"`` averages the patch tokens (CLS
        excluded), ``pool="cls"`` takes the CLS token.
        """
        if pool not in ("mean", "cls"):
            raise ValueError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if layer == -1:
            h = self.forward_features(x)
        elif isinstance(layer, int) and 0 <= layer < self.depth:
            _, layers = self.forward_tokens(self.patch_tokens(x), stop_after=layer)
            h = layers[layer]
        else:
            raise ValueError(f"layer must be -1 (final output) or in [0, {self.depth}), got {layer!r}")
        return h[:, 0] if pool == "cls" else h[:, 1:].mean(dim=1)

    # ------------------------------------------------------------------ training helpers
    def layer_id(self, name: str) -> int:
        """Layer index of parameter ``name`` for layer-wise lr decay.

        Patch embedding and CLS token: 0; block ``i``: ``i + 1``; anything else
        (final norm, heads, decoder): ``depth + 1``.  A leading ``encoder.`` is ignored.
        """
        if name.startswith("encoder."):
            name = name[len("encoder."):]
        if name.startswith(("patch_embed.", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def param_groups(self, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
        """AdamW groups: decay for weight matrices, none for biases/norms/cls token.

        ``layer_decay`` (e.g. 0.75 for fine-tuning) adds per-layer ``lr_scale`` via :meth:`layer_id`.
        """
        return param_groups(
            self.named_parameters(), weight_decay, self.layer_id, self.depth + 1, layer_decay
        )


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``tokens[b, ids[b]]`` for every sample: (B, L, D), (B, K) -> (B, K, D)."""
    if ids.dim() != 2 or ids.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"mask_ids_keep must have shape (B, K) with B={tokens.shape[0]}, got shape {tuple(ids.shape)}"
        )
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"mask_ids_keep must be an integer tensor, got {ids.dtype}")
    ids = ids.to(device=tokens.device, dtype=torch.int64)
    return torch.gather(tokens, 1, ids[:, :, None].expand(-1, -1, tokens.shape[-1]))
