"""`python -m llama.chat`: the interactive chat (llama.cli.chat)."""

if __name__ == "__main__":
    from .cli.chat import cli

    cli()
