"""Shared fixtures: a tiny SentencePiece tokenizer and tiny random Meta-layout checkpoints."""

import os
from pathlib import Path

import pytest
import torch

from llama.testing.synthetic import TINY_VOCAB, params_dict, random_state, tiny_args, train_sentencepiece
from llama.weights.meta import save_checkpoint
from support.llama3_tokenizer import llama3_tokenizer_path

# The test models are tiny: one thread is faster than two fighting over OpenMP barriers, and
# subprocesses (CLIs, torchrun ranks) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_bytes(train_sentencepiece(vocab_size=TINY_VOCAB))
    return path


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory):
    """make_ckpt(config, n_shards) -> directory; the same weights for every shard count."""
    cache = {}

    def make(name: str = "mha", n_shards: int = 1, seed: int = 0) -> Path:
        key = (name, n_shards, seed)
        if key not in cache:
            args = tiny_args(name)
            out = tmp_path_factory.mktemp(f"{name}-{n_shards}shard")
            save_checkpoint(random_state(args, seed), params_dict(args), out, n_shards)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def full_state():
    """full_state(config, seed) -> the unsharded weights make_ckpt wrote."""
    return lambda name="mha", seed=0: random_state(tiny_args(name), seed)


@pytest.fixture(scope="session")
def build(tokenizer_path, make_ckpt):
    """build(config, n_shards, **kw) -> Llama on CPU float32."""
    from llama import Llama

    def _build(name="mha", n_shards=1, max_seq_len=64, max_batch_size=4, **kw):
        kw.setdefault("device", "cpu")
        kw.setdefault("dtype", "float32")
        tokenizer = llama3_tokenizer_path() if name.startswith("llama3") else tokenizer_path
        return Llama.build(str(make_ckpt(name, n_shards)), str(tokenizer), max_seq_len, max_batch_size, **kw)

    return _build


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(False)
    yield


@pytest.fixture
def one_thread():
    # Even where OMP_NUM_THREADS asks for more: tiny matmuls gain nothing from threads, and on a shared
    # CPU OpenMP's spinning makes them crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
