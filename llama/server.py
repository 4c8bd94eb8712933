"""`python -m llama.server`: the OpenAI-compatible HTTP server in llama.cli.server."""

if __name__ == "__main__":
    from .cli.server import cli

    cli()
