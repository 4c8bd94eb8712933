"""Quantized models end to end: int4 quality on the trained demo model, and every format through
sharded checkpoints and batches."""

import pytest
import torch

from llama import Llama, demo
from llama.testing.likelihood import nats_per_char
from support.helpers import HELDOUT

PROMPTS = ["The quick brown fox", "Python is a programming language that", "A"]


@pytest.fixture(scope="module")
def heldout():
    return HELDOUT.read_text().splitlines()[:12]


def _demo(quantize=None) -> Llama:
    return Llama.build(
        str(demo.CKPT_DIR), str(demo.TOKENIZER_PATH), 512, 4, device="cpu", dtype="float32", quantize=quantize
    )


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_demo_loses_under_a_tenth_of_a_nat_per_char_of_held_out_text(heldout, method):
    # Measured (BENCHMARKS.md, whole file): float32 -1.2082, int8 -1.2083, int4 -1.2092 nats/char.
    plain, quantized = _demo(), _demo(method)
    assert quantized.model.layers[0].feed_forward.w1.__class__.__name__.startswith(method.capitalize())
    assert abs(nats_per_char(quantized, heldout) - nats_per_char(plain, heldout)) < 0.1


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_two_shard_checkpoint_quantizes_like_the_one_shard_one(build, method):
    # Each rank quantizes its own slice; int8 rows and int4 groups never straddle a shard boundary
    # (the model's split dims are multiples of 32), so the codes and scales are the same.
    one, two = build("gqa", 1, quantize=method), build("gqa", 2, quantize=method)
    for key, tensor in one.model.state_dict().items():
        assert torch.equal(tensor, two.model.state_dict()[key]), key


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_batch_generates_what_each_prompt_generates_alone(build, method):
    gen = build("mha", quantize=method)
    prompts = [gen.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    batch, _ = gen.generate(prompts, max_gen_len=6, temperature=0)
    alone = [gen.generate([p], max_gen_len=6, temperature=0)[0][0] for p in prompts]
    assert batch == alone
