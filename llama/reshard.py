"""`python -m llama.reshard`: the offline tool in llama.cli.reshard."""

if __name__ == "__main__":
    from .cli.reshard import cli

    cli()
