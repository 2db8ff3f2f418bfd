"""AudioMAE-style ViT masked autoencoder over log-mel spectrograms."""
from .config import MODEL_PRESETS, ModelConfig, model_preset
from .mae import MAEOutput, MaskedAutoencoder, Reconstruction, random_masking
from .vit import ViTEncoder, sincos_pos_embed_2d

__all__ = [
    "ModelConfig",
    "model_preset",
    "MODEL_PRESETS",
    "ViTEncoder",
    "MaskedAutoencoder",
    "MAEOutput",
    "Reconstruction",
    "random_masking",
    "sincos_pos_embed_2d",
]
