"""galtools: Unix-style tools for self-supervised learning on multi-band galaxy images."""
__version__ = "0.1.0"
