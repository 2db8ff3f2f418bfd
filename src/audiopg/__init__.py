"""AudioPG: pre-train audio encoders on a procedural sound world."""
__version__ = "0.1.0"

__all__ = ["Encoder", "__version__"]

# Heavy names load on first use, so that ``import audiopg`` stays light (no torch).
_LAZY = {"Encoder": ("audiopg.model.encoder", "Encoder")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'audiopg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
