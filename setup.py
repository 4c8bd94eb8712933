from setuptools import find_packages, setup

setup(
    name="llama",
    version="0.1.0",
    description="A faithful, portable and fast reimplementation of Meta's Llama reference generators "
    "(Llama 2, 3, 3.1, 3.2)",
    packages=find_packages(include=["llama", "llama.*"]),
    # csrc: compiled at first use by llama.kernels.native
    package_data={"llama": ["demo/*", "kernels/csrc/*.c", "kernels/csrc/*.h"]},
    python_requires=">=3.9",
    install_requires=[
        "torch",
        "fairscale",
        "fire",
        "sentencepiece",
        "tiktoken",
        "tokenizers",
        "safetensors",
        "tqdm",
        "fastapi",
        "uvicorn",
    ],
    extras_require={
        # the test suite, and `make lint`: ruff and mypy pinned so that "zero findings" means the same everywhere
        "test": ["pytest", "transformers", "openai", "httpx", "llama-models==0.3.0", "ruff==0.17.6", "mypy==2.4.1"],
    },
)
