"""The project's exception types.

Each subclasses the built-in type a caller would naturally catch (ValueError, FileNotFoundError),
so `except ValueError` keeps working; the subclass lets callers tell our checks apart.
"""


class LlamaError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(LlamaError, ValueError):
    """A value given by the user (argument, flag, params.json) is out of range or inconsistent."""


class CheckpointError(LlamaError, ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match params.json / the tokenizer."""


class MissingFileError(LlamaError, FileNotFoundError):
    """A path the user named does not exist or lacks the expected files."""


class BackendError(LlamaError, RuntimeError):
    """The requested device / process-group backend cannot be used on this machine."""


class GenerationError(LlamaError, RuntimeError):
    """Generation cannot go on (e.g. non-finite logits)."""


class RankError(LlamaError, RuntimeError):
    """Another model-parallel rank failed; the message is that rank's error."""


class BusyError(LlamaError, RuntimeError):
    """The engine's queue of waiting requests is full: try again later (HTTP 429/503)."""


class EngineClosedError(LlamaError, RuntimeError):
    """The engine was shut down, or failed, and takes no more requests."""


class ContextMemoryError(LlamaError, MemoryError):
    """The KV cache's pool of blocks cannot hold what a sequence needs (the message names the figures)."""
