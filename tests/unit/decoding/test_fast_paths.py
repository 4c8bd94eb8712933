"""Every fast path computes the same greedy tokens as the plain path, on the test checkpoints."""

import pytest
import torch

from llama import Llama
from llama.decoding import native_step as native_decode
from llama.decoding.static_step import StaticDecode
from llama.kernels import dense as kernels
from llama.layers.parallel import ColumnParallelLinear, ParallelEmbedding, RowParallelLinear
from llama.model import apply_rotary_emb, attend, rope_tables

PROMPTS = ["The quick brown fox", "Python is a programming language that", "A"]
SHAPES = [("mha", 1), ("mha", 2), ("gqa", 1), ("gqa", 2)]


def eager(llama: Llama) -> Llama:
    """The same model with llama.model's own one-token steps (not llama.native_decode's)."""
    return Llama(llama.model, llama.tokenizer)


@pytest.fixture
def no_native_step(monkeypatch):
    """Llama.build without the native one-token step, so that compile=True compiles."""
    monkeypatch.setattr(native_decode, "for_model", lambda model: None)


def greedy(llama, max_gen_len=12, logprobs=False):
    prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    return llama.generate(prompts, max_gen_len=max_gen_len, temperature=0, logprobs=logprobs)


@pytest.mark.parametrize("config,n_shards", SHAPES)
def test_single_rank_layers_skipping_fairscale_regions_give_identical_logprobs(build, config, n_shards):
    fast = greedy(eager(build(config, n_shards)), logprobs=True)
    plain = eager(build(config, n_shards))
    for module in plain.model.modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear, ParallelEmbedding)):
            module.single_rank = False  # through fairscale's copy/reduce/gather (identities at MP=1)
    assert greedy(plain, logprobs=True) == fast


@pytest.mark.parametrize("config,n_shards", SHAPES)
def test_static_shape_decode_step_generates_the_same_tokens(build, config, n_shards):
    plain = eager(build(config, n_shards))
    static = Llama(plain.model, plain.tokenizer, decode_step=StaticDecode(plain.model))
    tokens, logprobs = greedy(static, logprobs=True)
    ref_tokens, ref_logprobs = greedy(plain, logprobs=True)
    assert tokens == ref_tokens
    for ours, theirs in zip(logprobs, ref_logprobs):
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_build_accepts_compile_and_compiles_lazily(build, no_native_step):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    llama = build("mha", compile=True)
    assert llama.decode_step.compiled and counters["stats"]["unique_graphs"] == 0  # build compiled nothing
    prompt = llama.tokenizer.encode(PROMPTS[0], bos=True, eos=False)
    llama.generate([prompt], 2, temperature=0)
    assert counters["stats"]["unique_graphs"] == 1  # the first one-token step did, once


# torch.compile on CPU (inductor, C++) takes ~10 s per shape here: worth it, compile is a user-facing path.
@pytest.mark.slow
@pytest.mark.parametrize("config,n_shards", [("mha", 1), ("gqa", 2)])
def test_compiled_decode_generates_the_same_tokens(build, no_native_step, config, n_shards):
    assert greedy(build(config, n_shards, compile=True))[0] == greedy(build(config, n_shards))[0]


@pytest.mark.parametrize("config", ["mha", "gqa"])
def test_checking_for_eos_only_every_few_greedy_steps_returns_the_same(build, config):
    llama = build(config)
    prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    llama.tokenizer.stop_tokens = [greedy(llama, 6)[0][0][3]]  # a token row 0 generates: it will stop there
    every = llama.generate(prompts, 12, temperature=0, logprobs=True, echo=True)
    llama.eos_check_every = 5
    assert llama.generate(prompts, 12, temperature=0, logprobs=True, echo=True) == every


def test_sampling_checks_for_eos_every_step_so_random_draws_match_the_reference(build):
    llama = eager(build("mha"))
    llama.eos_check_every = 1000
    calls = []
    forward = llama.model.forward
    llama.model.forward = lambda tokens, pos=None, last=False: calls.append(pos) or forward(tokens, pos, last)
    row = greedy(llama, 6)[0][0]
    llama.tokenizer.stop_tokens = [row[3]]
    calls.clear()
    llama.generate([llama.tokenizer.encode(PROMPTS[0], bos=True, eos=False)], 12, temperature=0.0001)
    assert len(calls) == row.index(row[3]) + 1  # stopped at the step that drew eos (near-greedy draws)


def test_rotary_pairs_are_bit_identical_to_the_real_form_of_the_complex_product():
    cos, sin = rope_tables(16, 12, theta=10000.0)
    x = torch.randn(2, 12, 3, 16, generator=torch.Generator().manual_seed(0))
    a, b = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    expected = torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(-2)
    assert torch.equal(apply_rotary_emb(x, cos, sin), expected)


def test_grouped_attention_equals_attention_over_repeated_kv_heads():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 8, 16, generator=g)
    keys, values = torch.randn(2, 7, 2, 16, generator=g), torch.randn(2, 7, 2, 16, generator=g)
    mask = torch.full((3, 7), float("-inf")).triu(diagonal=5)
    k_rep = keys.repeat_interleave(4, dim=2).transpose(1, 2)  # kv head h serves query heads 4h..4h+3
    v_rep = values.repeat_interleave(4, dim=2).transpose(1, 2)
    scores = q.transpose(1, 2) @ k_rep.transpose(2, 3) / 4.0 + mask
    expected = (torch.softmax(scores, dim=-1) @ v_rep).transpose(1, 2).reshape(2, 3, 128)
    torch.testing.assert_close(attend(q, keys, values, mask), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("config,n_shards", [("mha", 1), ("gqa", 2)])
def test_onednn_one_row_linears_generate_the_same_tokens_as_f_linear(build, config, n_shards, monkeypatch):
    assert kernels.ONEDNN  # the x86/ARM CPU builds of torch have oneDNN; this path is what CPU users run
    monkeypatch.setattr(kernels, "ONEDNN_ONE_ROW", True)  # as on AMD CPUs (Intel ones take MKL's GEMV)
    fast_tokens, fast_logprobs = greedy(build(config, n_shards), logprobs=True)
    monkeypatch.setattr(kernels, "ONEDNN", False)
    tokens, logprobs = greedy(build(config, n_shards), logprobs=True)
    assert fast_tokens == tokens
    for ours, theirs in zip(fast_logprobs, logprobs):
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=0, atol=1e-5)


def test_onednn_linear_operator_matches_f_linear_eagerly_and_under_compile(monkeypatch):
    monkeypatch.setattr(kernels, "ONEDNN_ONE_ROW", True)  # as on an AMD CPU (an Intel one takes MKL's)
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(1, 1, 96, generator=g), torch.randn(40, 96, generator=g)
    expected = torch.nn.functional.linear(x, w)
    torch.testing.assert_close(kernels.linear(x, w), expected)
    torch.testing.assert_close(torch.compile(kernels.linear, fullgraph=True)(x, w), expected)
