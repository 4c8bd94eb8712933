"""`python -m llama.convert`: the offline tool in llama.cli.convert."""

if __name__ == "__main__":
    from .cli.convert import cli

    cli()
