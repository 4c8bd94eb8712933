"""Llama 3.1+ tool calling: tool definitions in the prompt, tool calls encoded and parsed, tool results."""
