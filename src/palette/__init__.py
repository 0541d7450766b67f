"""Palette: image-to-image diffusion models (Saharia et al., 2022)."""

__version__ = "0.1.0"
