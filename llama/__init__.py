"""Meta's Llama generators (Llama 2, 3, 3.1, 3.2 text), faithful and portable: Meta's API, checkpoints
and numbers, also from Hugging Face directories, on any device.

The public names are imported on first use, so that tools which need none of them
(`python -m llama.reshard`) do not load the generator.
"""

import importlib
from typing import TYPE_CHECKING

__all__ = ["Llama", "Dialog", "ModelArgs", "Transformer", "Tokenizer", "ChatFormat"]
_HOMES = {
    "Llama": "generation",
    "Dialog": "generation",
    "ModelArgs": "model",
    "Transformer": "model",
    "Tokenizer": "tokenizer",
    "ChatFormat": "chat_format",
}

if TYPE_CHECKING:
    from .chat_format import ChatFormat
    from .generation import Dialog, Llama
    from .model import ModelArgs, Transformer
    from .tokenizer import Tokenizer


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'llama' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
