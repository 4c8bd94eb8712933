"""The OpenAI-compatible HTTP server (`python -m llama.server`) on the engine: request parsing,
OpenAI's response and error shapes, the ASGI app."""
