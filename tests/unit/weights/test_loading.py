"""Loading Meta checkpoint directories: shard discovery, rope.freqs, strictness, placement."""

import shutil

import pytest
import torch

from llama import Llama
from llama.errors import CheckpointError
from llama.weights.meta import find_shards, load_shard


def test_shards_are_found_sorted_and_rope_freqs_is_the_one_extra_entry_ignored(
    make_ckpt, build, tokenizer_path, tmp_path
):
    ckpt = make_ckpt("mha", 2)
    shards = find_shards(ckpt)
    assert [p.name for p in shards] == ["consolidated.00.pth", "consolidated.01.pth"]
    assert "rope.freqs" in load_shard(shards[0])  # real checkpoints carry it...
    llama = build("mha", 2)  # ...and loading, strict about every other entry, ignores it
    assert "rope.freqs" not in llama.model.state_dict()
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(ckpt / "params.json", other)
    for path in shards:  # the same checkpoint with another extra entry is refused
        state = dict(load_shard(path))
        state["rope.freqz"] = state.pop("rope.freqs")
        torch.save(state, other / path.name)
    with pytest.raises(CheckpointError, match=r"unexpected weight 'rope.freqz' in checkpoint"):
        Llama.build(str(other), str(tokenizer_path), 64, 4, device="cpu")


def test_weights_land_on_the_requested_device_and_dtype_with_caches_beside_them(build):
    llama = build("gqa", dtype="bfloat16")
    assert {p.dtype for p in llama.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in llama.model.parameters()} == {"cpu"}
    cache = llama.model.layers[0].attention.cache
    # Paged (llama.kv_cache): blocks of (kv heads, positions, head_dim), none until a sequence needs them.
    assert cache.k.dtype == torch.bfloat16 and cache.k.shape == (0, 2, 64, 8)
    assert llama.model.rope_cos.dtype == torch.float32  # rotary tables stay float32


def test_two_shards_merge_into_the_full_weights(make_ckpt, build, full_state):
    llama = build("gqa", 2)
    full = full_state("gqa")
    state = llama.model.state_dict()
    for key, tensor in full.items():
        if key != "rope.freqs":
            assert torch.equal(state[key], tensor), key
