"""llama.native_decode: one-token steps of float32, bfloat16, int8 and int4 models on the CPU in one
native call (llama/csrc/decode.c), against the eager llama.model steps they replace (the reference's
tokens: tests/unit/test_generation.py, which decodes through it)."""

import pytest
import torch

from llama import Llama
from llama.decoding import native_step as native_decode
from llama.decoding.native_step import NativeDecode

PROMPTS = ["The quick brown fox", "Python is a programming language that", "A"]
METHODS = ["int4", "int8"]
# (dtype, quantize): every kind of model decode.c runs
FORMATS = [("float32", None), ("float32", "int4"), ("float32", "int8"), ("bfloat16", None), ("bfloat16", "int4")]


def eager(gen: Llama) -> Llama:
    """The same model and tokenizer, one-token steps through llama.model."""
    return Llama(gen.model, gen.tokenizer)


@pytest.mark.parametrize("dtype, method", FORMATS)
def test_cpu_models_take_the_native_step(build, dtype, method):
    assert isinstance(build("gqa", dtype=dtype, quantize=method).decode_step, NativeDecode)


def test_float16_models_decode_eagerly(build):
    gen = build("gqa", dtype="float16")
    assert gen.decode_step is None
    assert native_decode.why_not(gen.model) == "the matmul weights are not all float32 or all bfloat16 on the CPU"


def test_without_the_native_kernels_steps_run_eagerly(build, monkeypatch):
    monkeypatch.setattr(native_decode.native, "library", lambda: None)
    gen = build("mha", quantize="int4")
    assert gen.decode_step is None and native_decode.why_not(gen.model) == "the native kernels are not available"


def test_model_parallel_layers_are_left_to_the_eager_step(build):
    gen = build("mha", quantize="int4")
    gen.model.layers[1].attention.wo.single_rank = False  # what a layer holding a slice of a 2-rank model says
    assert native_decode.why_not(gen.model) == "model parallel (the layers hold slices)"


@pytest.mark.parametrize("dtype, method", FORMATS)
@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_every_step_gives_the_eager_steps_logits_and_caches(build, name, dtype, method):
    # Two copies of one model: one decodes natively, the other eagerly, from the same prompt.
    native_gen, eager_gen = (build(name, dtype=dtype, quantize=method) for _ in range(2))
    torch.manual_seed(0)
    tokens = torch.randint(3, 500, (3, 24))
    for gen in (native_gen, eager_gen):
        gen.model.forward(tokens[:, :8], 0)
    for pos in range(8, 24):
        got = native_gen.decode_step(tokens[:, pos : pos + 1], pos)
        want = eager_gen.model.forward(tokens[:, pos : pos + 1], pos)
        assert got.shape == want.shape == (3, 1, 512) and got.dtype == torch.float32
        # Not bit for bit: the sums run in another order (float32: 5e-7 of the largest logit), and
        # where that moves a normalized activation across a rounding boundary (of its int8 group,
        # or of bfloat16), the results differ by one step (measured: at most 0.9 % of the largest
        # logit, 0.3 % on average; a wrong rotation or head would be off by ~100 %).
        exact = (dtype, method) == ("float32", None)
        assert (got - want).abs().max() <= (1e-5 if exact else 2e-2) * want.abs().max(), pos
        assert (got - want).abs().mean() <= (1e-6 if exact else 5e-3) * want.abs().mean(), pos
    for a, b in zip(native_gen.model.layers, eager_gen.model.layers):
        for got, want in ((a.attention.cache.k, b.attention.cache.k), (a.attention.cache.v, b.attention.cache.v)):
            got, want = got.float(), want.float()
            assert (got[:3, :24] - want[:3, :24]).abs().max() <= 5e-3 * want[:3, :24].abs().max()
            assert not got[:3, 24:].any()  # nothing written past the last position


@pytest.mark.parametrize("dtype, method", FORMATS)
def test_the_demo_model_generates_the_eager_tokens_and_logprobs_and_samples_reproducibly(dtype, method):
    gen = Llama.build_demo(device="cpu", dtype=dtype, quantize=method)
    assert isinstance(gen.decode_step, NativeDecode)
    prompts = [gen.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    tokens, logprobs = gen.generate(prompts, max_gen_len=40, temperature=0, logprobs=True)
    # One prompt at a time: at batch 1 the eager bfloat16 matmuls are the same kernel as the native
    # step's (at batch 3 torch's GEMM sums in another order, and bfloat16 logits tie often enough
    # for greedy decoding to part ways).
    want_tokens, want_logprobs = [], []
    for prompt in prompts:
        one_tokens, one_logprobs = eager(gen).generate([prompt], max_gen_len=40, temperature=0, logprobs=True)
        want_tokens += one_tokens
        want_logprobs += one_logprobs
    assert tokens == want_tokens
    # float32: 1e-6 measured, int8 3e-4; int4 reads its activations as int8 (127 levels), so a
    # last-bit difference upstream can move one a level: 0.025 measured on an AVX2 CPU; bfloat16
    # logits are rounded to 8 bits: 0.05.
    atol = {("float32", None): 1e-3, ("float32", "int8"): 1e-3, ("float32", "int4"): 0.05}.get((dtype, method), 0.1)
    for got, want in zip(logprobs, want_logprobs):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=atol)
    torch.manual_seed(5)
    sampled = gen.generate(prompts, max_gen_len=20, temperature=0.8, top_p=0.9)[0]
    torch.manual_seed(5)
    assert sampled == gen.generate(prompts, max_gen_len=20, temperature=0.8, top_p=0.9)[0]


@pytest.mark.parametrize("dtype, method", [("float32", None), ("float32", "int4"), ("float32", "int8")])
@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_a_prompt_runs_natively_with_the_eager_models_logits_and_caches(build, name, dtype, method):
    native_gen, eager_gen = (build(name, dtype=dtype, quantize=method) for _ in range(2))
    torch.manual_seed(1)
    tokens = torch.randint(3, 500, (3, 12))
    assert native_gen.decode_step.takes_prompt(tokens)
    got = native_gen.decode_step(tokens[:, :9], 0)  # a prompt, then a second chunk after it
    want = eager_gen.model.forward(tokens[:, :9], 0, last_only=True)
    assert got.shape == want.shape == (3, 1, 512)
    exact = (dtype, method) == ("float32", None)
    assert (got - want).abs().max() <= (1e-5 if exact else 2e-2) * want.abs().max()
    got = native_gen.decode_step(tokens[:, 9:], 9)
    want = eager_gen.model.forward(tokens[:, 9:], 9, last_only=True)
    assert (got - want).abs().max() <= (1e-5 if exact else 2e-2) * want.abs().max()
    for a, b in zip(native_gen.model.layers, eager_gen.model.layers):  # causal: each position's own k and v
        for got, want in ((a.attention.cache.k, b.attention.cache.k), (a.attention.cache.v, b.attention.cache.v)):
            assert (got[:3, :12] - want[:3, :12]).abs().max() <= 5e-3 * want[:3, :12].abs().max()


def test_generate_sends_short_prompts_without_logprobs_to_the_native_step(build):
    gen = build("gqa", quantize="int4", max_seq_len=128)
    calls = []
    forward = gen.model.forward
    gen.model.forward = lambda tokens, pos=None, last=False: (
        calls.append(tuple(tokens.shape)) or forward(tokens, pos, last)
    )
    prompts = [gen.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    gen.generate(prompts, max_gen_len=4, temperature=0)
    assert calls == []  # the prompt and every step ran natively
    gen.generate(prompts, max_gen_len=4, temperature=0, logprobs=True)
    assert len(calls) == 1 and calls[0][1] > 1  # log-probs need every position's logits: llama.model's prompt
    calls.clear()
    gen.generate([list(range(3, 70))], max_gen_len=2, temperature=0)
    assert calls == []  # more than 64 tokens of int4 weights: native calls of 64 tokens (prompt_chunk)
    float_gen = build("gqa", max_seq_len=128)
    float_gen.model.forward = lambda tokens, pos=None, last=False: (
        calls.append(tuple(tokens.shape)) or forward(tokens, pos, last)
    )
    float_gen.generate([list(range(3, 70))], max_gen_len=2, temperature=0)
    assert calls == [(1, 67)]  # float32 weights: llama.model's prompt (oneDNN's GEMM)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_long_quantized_prompt_runs_natively_a_chunk_at_a_time_with_the_eager_logits(build, method):
    native_gen, eager_gen = (build("gqa", quantize=method, max_seq_len=256, max_batch_size=2) for _ in range(2))
    tokens = torch.randint(3, 500, (2, 150), generator=torch.Generator().manual_seed(4))
    assert native_gen.decode_step.prompt_chunk(tokens) == 32  # 64 rows a call, 2 rows
    got = native_gen._forward(tokens, 0, last_only=True)
    want = eager_gen.model.forward(tokens, 0, last_only=True)
    assert (got - want).abs().max() <= 2e-2 * want.abs().max()


def test_bfloat16_prompts_stay_with_torchs_gemm(build):
    assert not build("gqa", dtype="bfloat16").decode_step.takes_prompt(torch.ones(1, 8, dtype=torch.long))


@pytest.mark.parametrize("dtype, method", FORMATS)
def test_the_native_step_gives_the_same_bits_on_any_thread_count(build, dtype, method):
    # Every output is summed by one thread in one order, however the rows are split among threads.
    gen = build("gqa", dtype=dtype, quantize=method)
    torch.manual_seed(2)
    tokens = torch.randint(3, 500, (3, 10))
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(1)
            gen.model.forward(tokens[:, :8], 0)  # the same cache for every thread count (torch's GEMMs may not be)
            torch.set_num_threads(threads)
            first = gen.decode_step(tokens[:, :8], 0) if gen.decode_step.takes_prompt(tokens[:, :8]) else None
            results.append((first, gen.decode_step(tokens[:, 8:9], 8), gen.decode_step(tokens[:, 9:], 9)))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert (a is None and b is None) or torch.equal(a, b)


def test_the_native_logits_scan_is_argmax_and_flags_non_finite_rows(build):
    step = build("mha").decode_step
    logits = torch.randn(6, 1, 1003, generator=torch.Generator().manual_seed(0))  # a vocab that is not 8k
    logits[1, 0, 17] = logits[1, 0, 900] = 50.0  # a tie: the first wins, as with torch.argmax
    logits[2, 0, 1002] = 60.0  # the maximum in the tail past the last full vector
    logits[3, 0, 5] = float("nan")
    logits[4, 0, 1001] = float("inf")
    logits[5, 0, 0] = float("-inf")
    best = step.scan(logits)
    assert best[:3] == logits[:3, -1].argmax(dim=-1).tolist() == [best[0], 17, 1002]
    assert best[3:] == [-1, -1, -1]
    assert step.scan(logits[:3].transpose(0, 1).contiguous().transpose(0, 1)) == best[:3]  # any layout
