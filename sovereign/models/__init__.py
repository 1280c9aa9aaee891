"""Model checkpoints that ship with the package (see README.md here)."""
