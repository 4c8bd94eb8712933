"""The paged KV cache (llama.kv_cache): memory that grows with the tokens held, blocks shared by the
slots and given back, the same logits as one full pass however the blocks fall, and typed errors
naming the figures when the pool is full."""

import pytest
import torch

from llama import Llama
from llama.decoding import native_step
from llama.errors import ConfigError, ContextMemoryError
from llama.kv_cache import BlockPool, PagedKV
from llama.model import ModelArgs, Transformer
from llama.testing.synthetic import params_dict, random_state, tiny_args
from llama.weights.meta import save_checkpoint


def tiny(max_seq_len=64, max_batch_size=3, **kw):
    torch.manual_seed(0)
    args = ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, multiple_of=16,
                     max_seq_len=max_seq_len, max_batch_size=max_batch_size, **kw)  # fmt: skip
    return Transformer(args).eval().requires_grad_(False)


def test_a_layer_writes_positions_across_blocks_and_returns_each_rows_prefix():
    pool = BlockPool(2, 16, 32, token_bytes=8, block_tokens=4)
    cache = PagedKV(pool, kv_heads=1, head_dim=2)
    pool.ensure([0, 1], [7, 7])
    k = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 1, 2) + 1
    keys, values = cache.update(4, k, 2 * k)
    assert keys.shape == (2, 7, 1, 2)
    assert keys[:, :4].abs().sum() == 0 and torch.equal(keys[:, 4:], k) and torch.equal(values[:, 4:], 2 * k)
    # Row 1's positions 4..6 sit in its own second block, not next to row 0's.
    assert pool.held == [[0, 1], [2, 3]] and torch.equal(cache.k[3, 0, :3], k[1, :, 0])


def test_memory_grows_with_the_tokens_held_and_freed_blocks_are_taken_again():
    pool = BlockPool(4, 1024, 4 * 1024, token_bytes=8, block_tokens=16)
    cache = PagedKV(pool, kv_heads=1, head_dim=2)
    assert cache.k.shape[0] == 0 and pool.capacity == 0  # max_seq_len costs nothing until used
    pool.ensure([0], [20])
    assert pool.held[0] == [0, 1] and pool.capacity == 16 and cache.k.shape == (16, 1, 16, 2)
    pool.ensure([1], [16 * 20])  # beyond the first allocation: the storage doubles (at least)
    assert pool.capacity == 32 and len(pool.held[1]) == 20 and pool.generation == 2
    pool.truncate(1, 17)  # keeps positions 0..16: two blocks
    assert len(pool.held[1]) == 2 and pool.table[1, 2] == -1 and pool.used == 4
    pool.truncate(0)
    pool.ensure([2], [40])
    assert pool.held[2] == [0, 1, 4]  # the lowest free ids first


def test_by_default_every_slot_can_hold_max_seq_len_at_once():
    pool = BlockPool(2, 264, None, token_bytes=8)  # 264 positions: two blocks of 256 per slot
    pool.ensure([0, 1], [264, 264])
    assert pool.max_blocks == 4 and pool.used == 4


def test_a_full_pool_is_a_context_memory_error_with_the_figures_and_nothing_taken():
    pool = BlockPool(2, 64, 64, token_bytes=1024, block_tokens=16)
    pool.ensure([0], [48])
    with pytest.raises(ContextMemoryError) as err:
        pool.ensure([1], [32])
    assert str(err.value) == (
        "context memory exhausted: 2 more blocks of 16 tokens (0.00 GiB) are needed for 32 tokens, but the KV "
        "cache holds 4 blocks of 16 tokens (64 tokens, 0.00 GiB), 3 in use and none is free; wait for other "
        "requests to end, ask for fewer tokens, or build with a larger kv_cache_tokens"
    )
    assert pool.held[1] == [] and pool.used == 3


@pytest.mark.parametrize("native", [False, True])
def test_cached_decoding_over_many_blocks_and_growing_storage_equals_one_full_pass(build, native, monkeypatch):
    monkeypatch.setattr("llama.kv_cache.BLOCK_TOKENS", 8)
    monkeypatch.setattr("llama.kv_cache.FIRST_BLOCKS", 2)  # the storage moves several times on the way
    model = build("gqa", max_seq_len=64, max_batch_size=3).model
    tokens = torch.randint(0, 40, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(tokens)
        model.setup_caches()
        if native and native_step.why_not(model) is not None:
            pytest.skip(native_step.why_not(model))
        step = native_step.NativeDecode(model) if native else None
        run = step.rows if step else lambda t, s, p: model.forward_rows(t, s, p)
        slots = torch.tensor([2, 0, 1])  # each row in its own slot, the blocks interleaved
        out = [run(tokens[:, :13], slots, torch.zeros(3, dtype=torch.long))]
        out += [run(tokens[:, i : i + 1], slots, torch.full((3,), i)) for i in range(13, 40)]
    assert model.kv_pool.generation >= 3 and model.kv_pool.used == 15
    torch.testing.assert_close(torch.cat(out, dim=1)[:, -1], full[:, -1], rtol=1e-5, atol=1e-5)


def test_a_long_max_seq_len_costs_nothing_until_used():
    model = tiny(max_seq_len=131072, max_batch_size=4)
    model.setup_caches()
    assert sum(layer.attention.cache.k.numel() for layer in model.layers) == 0
    model.forward(torch.zeros(1, 5, dtype=torch.long), 0)
    layer = model.layers[0].attention.cache
    assert layer.k.shape[0] == 16 and model.kv_pool.held[0] == [0]  # 16 blocks of 256 positions, 1 held


def eager_and_native(model, prompt: int, total: int, seed: int):
    """Two rows (in slots 1 and 0) of `prompt` tokens, then one-token steps to `total`, through the eager
    forward_rows and the native step: the two lists of logits (skips where the native step cannot run)."""
    step = native_step.for_model(model)
    if step is None:
        pytest.skip(native_step.why_not(model))
    tokens = torch.randint(3, 300, (2, total), generator=torch.Generator().manual_seed(seed))
    slots, outs = torch.tensor([1, 0]), []
    with torch.inference_mode():
        for run in (model.forward_rows, step.rows):
            model.kv_pool.truncate(0), model.kv_pool.truncate(1)
            first = run(tokens[:, :prompt], slots, torch.zeros(2, dtype=torch.long))
            outs.append([first] + [run(tokens[:, i : i + 1], slots, torch.full((2,), i)) for i in range(prompt, total)])
    return outs


@pytest.mark.parametrize("model_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kv", ["float32", "bfloat16", "int8"])
def test_the_cache_stores_any_dtype_and_the_native_step_reads_it_as_the_eager_one_does(build, model_dtype, kv):
    gen = build("gqa", dtype=model_dtype, kv_cache_dtype=kv, max_batch_size=2)
    model = gen.model
    cache = model.layers[0].attention.cache
    assert cache.k.dtype == {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.int8}[kv]
    assert (cache.k_scale is not None) == (kv == "int8")
    outs = eager_and_native(model, 20, 30, seed=2)
    for eager, native in zip(*outs):
        torch.testing.assert_close(native, eager, rtol=1e-4, atol=1e-4)


def test_an_int8_cache_moves_log_probs_a_little_and_takes_a_quarter_of_the_memory(build):
    plain, small = build("gqa"), build("gqa", kv_cache_dtype="int8")
    x = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a, b = (torch.log_softmax(g.model.forward(x, 0), -1) for g in (plain, small))
    assert 0 < (a - b).abs().mean() < 0.05  # a random tiny model, log-probs spread over -20..0
    per_block = [g.model.kv_pool.block_bytes for g in (plain, small)]
    assert per_block[1] == per_block[0] // 4 + per_block[0] // 4 // plain.model.params.head_dim * 4


def test_an_unknown_kv_cache_dtype_is_refused_naming_the_choices(build):
    with pytest.raises(ConfigError, match=r"unknown kv_cache_dtype 'float8'; use one of float32, bfloat16, int8 "):
        build("gqa", kv_cache_dtype="float8")


@pytest.mark.parametrize("n_heads", [8, 4])  # head_dim 8 (the vector path), 12 (the portable one)
@pytest.mark.parametrize("kv", ["float32", "bfloat16", "int8"])
def test_native_attention_over_several_blocks_matches_the_eager_one(tmp_path, tokenizer_path, n_heads, kv):
    args = tiny_args("mha", dim=64 if n_heads == 8 else 48, n_heads=n_heads)
    save_checkpoint(random_state(args, 0), params_dict(args), tmp_path, 1)
    gen = Llama.build(str(tmp_path), str(tokenizer_path), 600, 2, device="cpu", dtype="float32", kv_cache_dtype=kv)
    model = gen.model
    outs = eager_and_native(model, 517, 530, seed=4)  # two blocks of 256 and a bit
    # A bfloat16 or int8 store can round a key the two paths computed a rounding apart to neighbouring
    # codes (the same at the previous attention kernel): a looser bound there than for float32.
    tol = 1e-5 if kv == "float32" else 5e-4
    for eager, native in zip(*outs):
        torch.testing.assert_close(native, eager, rtol=tol, atol=tol)
