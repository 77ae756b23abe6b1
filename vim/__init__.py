"""Vision Mamba."""
