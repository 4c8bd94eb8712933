"""Unit tests, one folder per package of llama/ (the top-level modules here): in-process, tiny models."""
