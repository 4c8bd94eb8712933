"""A faithful, portable Llama 2 generator: Meta's API, checkpoints and numbers, on any device."""
from .generation import Dialog, Llama
from .model import ModelArgs, Transformer
from .tokenizer import Tokenizer

__all__ = ["Llama", "Dialog", "ModelArgs", "Transformer", "Tokenizer"]
