"""`python -m llama.quantize`: the offline tool in llama.cli.quantize."""

if __name__ == "__main__":
    from .cli.quantize import cli

    cli()
