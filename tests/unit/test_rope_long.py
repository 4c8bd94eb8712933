"""Llama 3.1's scaled RoPE beyond Llama 3's 8192-token context: positions 8191 to 65535.

Oracle: Meta's `meta-llama/llama-models` (the llama-models 0.3.0 wheel, module
`llama_models.llama3.model`): `precompute_freqs_cis(..., use_scaled=True)`, with its `apply_scaling`,
for the rotary tables, and its `Transformer` for the logits of a tiny random model that decodes at
start positions 9000, 60000 and up to 65535, given the same weights and the same calls. Both run on
the CPU in float32.
"""

import dataclasses
import math

import pytest
import torch

from llama.layers.parallel import init_model_parallel
from llama.model import ModelArgs, Transformer
from llama.runtime.backend import select
from llama.runtime.distributed import init_distributed
from llama.testing.synthetic import random_state, tiny_args
from support.meta_llama3 import metas_transformer

THETA = 500000.0
MAX_SEQ_LEN = 65536
FIRST = 8191  # the last position of Llama 3's original context; the tables are compared from here on
# (start_pos, number of tokens) of each call, the same for both models: a prompt, then chunks and
# single steps far beyond it, the last one ending at position 65535. The cache positions in between
# are never written: zeros in both caches, which both attend to.
CALLS = [(0, 6), (9000, 5), (9005, 1), (60000, 4), (60004, 1), (65530, 6)]


@pytest.fixture(scope="module")
def fairscale_groups():
    """The process group and fairscale's model-parallel groups Meta's layers read, as Llama.build makes them."""
    init_distributed(select(device="cpu", dtype="float32"))
    init_model_parallel(1)


def full_width(freqs_cis: torch.Tensor):
    """Meta's complex table (end, head_dim // 2) -> our full-width cos and sin tables (llama.model.pair_tables)."""
    c, s = freqs_cis.real, freqs_cis.imag
    return torch.stack((c, c), dim=-1).flatten(-2), torch.stack((-s, s), dim=-1).flatten(-2)


@pytest.mark.parametrize("head_dim", [16, 128])
def test_rotary_tables_equal_metas_scaled_freqs_cis_from_8k_to_64k(head_dim):
    from llama_models.llama3.model import precompute_freqs_cis

    inv_freq = 1.0 / THETA ** (torch.arange(0, head_dim, 2).float() / head_dim)
    wavelen = 2 * math.pi / inv_freq
    # all three bands of the scaling are in these tables: kept (< 8192 / 4), blended, divided by 8 (> 8192)
    assert (wavelen < 2048).any() and ((wavelen >= 2048) & (wavelen <= 8192)).any() and (wavelen > 8192).any()

    args = ModelArgs(
        dim=2 * head_dim,
        n_layers=0,
        n_heads=2,
        vocab_size=8,
        rope_theta=THETA,
        use_scaled_rope=True,
        max_seq_len=MAX_SEQ_LEN,
        max_batch_size=1,
    )
    ours = Transformer(args)
    cos, sin = full_width(precompute_freqs_cis(head_dim, 2 * MAX_SEQ_LEN, THETA, use_scaled=True)[FIRST:MAX_SEQ_LEN])
    # the same float32 angles; torch.polar's cos and sin against torch.cos and torch.sin: 1 ulp (6e-8) measured
    torch.testing.assert_close(ours.rope_cos[FIRST:MAX_SEQ_LEN], cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.rope_sin[FIRST:MAX_SEQ_LEN], sin, rtol=0, atol=1e-6)

    unscaled = Transformer(dataclasses.replace(args, use_scaled_rope=False))
    assert (unscaled.rope_cos[FIRST:MAX_SEQ_LEN] - cos).abs().max() > 0.5  # ~2 measured: the check can fail


def our_model(args: ModelArgs, state) -> Transformer:
    model = Transformer(args)
    model.load_state_dict({k: v for k, v in state.items() if k != "rope.freqs"}, strict=True)
    model.setup_caches()
    return model.eval()


def call(model: Transformer, path: str, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
    """One step of `model` at start_pos through the entry point `path` -> logits (1, seqlen, vocab)."""
    if path == "forward_rows":  # the engine's steps: cache slot 0, all positions' logits
        return model.forward_rows(tokens, torch.tensor([0]), torch.tensor([start_pos]), last_only=False)
    if path == "forward_static" and tokens.shape[1] == 1:  # the compiled decode step; prompts go through forward
        return model.forward_static(tokens, torch.tensor([start_pos]))
    return model.forward(tokens, start_pos)


@pytest.mark.parametrize("path", ["forward", "forward_static", "forward_rows"])
def test_logits_beyond_8k_equal_metas_transformer(fairscale_groups, path):
    args = tiny_args("gqa", use_scaled_rope=True, max_seq_len=MAX_SEQ_LEN, max_batch_size=1)  # GQA, head_dim 8
    state = random_state(args, seed=0)
    ours = our_model(args, state)
    unscaled = our_model(dataclasses.replace(args, use_scaled_rope=False), state)
    meta = metas_transformer(state, args, MAX_SEQ_LEN, 1)  # its caches: 4 MiB a layer
    g = torch.Generator().manual_seed(1)
    got, want, off = [], [], []
    with torch.no_grad():
        for start_pos, n in CALLS:
            tokens = torch.randint(0, args.vocab_size, (1, n), generator=g)
            want.append(meta.forward(tokens, start_pos))
            got.append(call(ours, path, tokens, start_pos))
            off.append((call(unscaled, path, tokens, start_pos) - want[-1]).abs().max().item())
    # float32 sums in another order than Meta's: up to 6e-6 measured, of logits up to ~17
    torch.testing.assert_close(torch.cat(got, dim=1), torch.cat(want, dim=1), rtol=0, atol=1e-5)
    assert min(off) > 1e-3, off  # without the scaling: 5e-3 to 1.5e-2 measured, so the check can fail
