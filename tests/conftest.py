"""Shared fixtures: a tiny SentencePiece tokenizer and tiny random Meta-layout checkpoints."""
import io
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from llama.checkpoint import save_checkpoint
from llama.model import ModelArgs
from llama.synthetic import params_dict, random_state

# The test models are tiny: one thread is faster than two fighting over OpenMP barriers, and
# subprocesses (CLIs, torchrun ranks) inherit the setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

VOCAB_SIZE = 512

# name -> ModelArgs (vocab_size filled in from the tokenizer).
CONFIGS = {
    # multi-head attention, plain SwiGLU width
    "mha": dict(dim=64, n_layers=2, n_heads=4, multiple_of=32, norm_eps=1e-5),
    # grouped-query attention (4 query heads per kv head), ffn_dim_multiplier, custom rope_theta
    "gqa": dict(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=32, ffn_dim_multiplier=1.3,
                norm_eps=1e-5, rope_theta=500000.0),
}


def training_text():
    """English prose that ships with Python: the pydoc topic pages."""
    from pydoc_data.topics import topics

    for text in topics.values():
        for line in text.splitlines():
            line = line.strip()
            if len(line) > 20:
                yield line


def train_tokenizer(path: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_text(), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        input_sentence_size=20000, shuffle_input_sentence=False, minloglevel=2, character_coverage=0.9995,
        num_threads=2,
    )
    path.write_bytes(model.getvalue())
    return path


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def model_args(name: str, **overrides) -> ModelArgs:
    return ModelArgs(vocab_size=VOCAB_SIZE, **{**CONFIGS[name], **overrides})


@pytest.fixture(scope="session")
def make_ckpt(tmp_path_factory):
    """make_ckpt(config, n_shards) -> directory; the same weights for every shard count."""
    cache = {}

    def make(name: str = "mha", n_shards: int = 1, seed: int = 0) -> Path:
        key = (name, n_shards, seed)
        if key not in cache:
            args = model_args(name)
            out = tmp_path_factory.mktemp(f"{name}-{n_shards}shard")
            save_checkpoint(random_state(args, seed), params_dict(args), out, n_shards)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def full_state():
    """full_state(config, seed) -> the unsharded weights make_ckpt wrote."""
    return lambda name="mha", seed=0: random_state(model_args(name), seed)


@pytest.fixture(scope="session")
def build(tokenizer_path, make_ckpt):
    """build(config, n_shards, **kw) -> Llama on CPU float32."""
    from llama import Llama

    def _build(name="mha", n_shards=1, max_seq_len=64, max_batch_size=4, **kw):
        kw.setdefault("device", "cpu")
        kw.setdefault("dtype", "float32")
        return Llama.build(str(make_ckpt(name, n_shards)), str(tokenizer_path), max_seq_len, max_batch_size, **kw)

    return _build


@pytest.fixture(autouse=True)
def _deterministic():
    torch.use_deterministic_algorithms(False)
    yield


@pytest.fixture
def one_thread():
    # Even where OMP_NUM_THREADS asks for more: tiny matmuls gain nothing from threads, and on a shared CPU OpenMP's spinning makes them crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
