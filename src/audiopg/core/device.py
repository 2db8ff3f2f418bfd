"""Where tensors run: the one device resolver, torchrun's process group, CPU threads."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from audiopg.core.errors import ConfigError


def resolve_device(requested: str | torch.device, key: str = "device") -> torch.device:
    """``"auto"``: CUDA when available, else the CPU.  An unknown name, or CUDA without CUDA, raises
    ConfigError naming ``key``."""
    if isinstance(requested, str) and requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(key, f"unknown device {str(requested)!r} ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(key, f"{str(requested)!r} asked for, but CUDA is not available (use 'cpu' or 'auto')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(key, f"{str(requested)!r} asked for, but there are {torch.cuda.device_count()} CUDA "
                               f"device(s) (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    if device.type not in ("cpu", "cuda"):
        backend = getattr(torch, device.type, None)
        if device.type == "meta" or not getattr(backend, "is_available", lambda: False)():
            why = "it holds no data" if device.type == "meta" else "it is not available on this machine"
            raise ConfigError(key, f"{str(requested)!r} cannot run the model ({why}); use 'cpu', 'cuda' or 'auto'")
    return device


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def setup_distributed(requested: str) -> tuple[DistInfo, torch.device]:
    """Resolve the device and, under torchrun (``WORLD_SIZE`` > 1), join the process group."""
    info = DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    device = resolve_device(requested)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if info.enabled and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, **({"device_id": device} if device.type == "cuda" else {}))
    return info, device


def set_torch_threads(spec: str | int | None, log=None) -> int:
    """Set torch's intra-op CPU threads: an int, None (leave as is) or "auto".

    "auto" uses 1 thread when the machine is already busy (1-minute load average at or above the number
    of cores): on a shared CPU, oversubscribed intra-op threads were measured 10x slower than one thread
    for the small per-clip operations of feature extraction.  Returns the thread count in use.
    """
    log = log or (lambda msg: None)
    if spec is None:
        return torch.get_num_threads()
    if spec == "auto":
        cores = os.cpu_count() or 1
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
        if load >= cores - 0.5:
            torch.set_num_threads(1)
            log(f"CPU busy (load {load:.1f} on {cores} cores): using 1 torch thread (--threads to override)")
        return torch.get_num_threads()
    n = int(spec)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n
