"""AudioPG: pre-train audio encoders on a procedural sound world."""
__version__ = "0.1.0"
