"""avaserve: per-second person action detection (AVA) — training, export and serving."""

__version__ = "0.1.0"
