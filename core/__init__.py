"""Torch-free code shared by training, export and the service (DESIGN.md: core/)."""
