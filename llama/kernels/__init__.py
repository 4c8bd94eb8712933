"""Matmuls: the torch paths and the project's native CPU kernels (csrc/), named by weight format,
and the one rule that picks between them."""
