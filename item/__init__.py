"""ITEM: AI-generated image detection by image-text misalignment in CLIP space."""

__version__ = "0.1.0"
