"""Which models can call tools: Llama 3.1 and later (Llama 2 and 3.0 were not trained for it)."""

from ..errors import ConfigError


def check_tool_model(tokenizer_kind: str, use_scaled_rope: bool) -> None:
    """Refuse tools for a Llama 2 (SentencePiece tokenizer) or Llama 3.0 (no scaled RoPE) model."""
    if tokenizer_kind != "tiktoken":
        raise ConfigError(
            "tools need a Llama 3.1+ model; this is a Llama 2 model (SentencePiece tokenizer), whose [INST] "
            "chat format has no tool calling"
        )
    if not use_scaled_rope:
        raise ConfigError(
            'tools need a Llama 3.1+ model (params.json with "use_scaled_rope": true); this is a Llama 3.0 '
            "model, which was not trained for tool calling"
        )
