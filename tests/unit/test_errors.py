"""Every user mistake raises a typed exception whose message names the value, the rule and the fix.

Library-level cases; the same mistakes through the command line are in tests/e2e/test_cli_errors.py.
"""

import json
import math
import os
import shutil

import pytest
import torch

from llama import Llama, Tokenizer
from llama.errors import CheckpointError, ConfigError, GenerationError, LlamaError, MissingFileError, RankError
from llama.runtime import ranks
from llama.testing.synthetic import params_dict
from llama.testing.synthetic import tiny_args as model_args
from llama.weights import loading
from llama.weights.meta import save_checkpoint


def build_from(ckpt_dir, tokenizer_path, max_seq_len=64, max_batch_size=4, **kw):
    return Llama.build(
        str(ckpt_dir),
        str(tokenizer_path),
        max_seq_len,
        max_batch_size,
        device="cpu",
        dtype=kw.pop("dtype", "float32"),
        **kw,
    )


@pytest.fixture
def write_ckpt(tmp_path, full_state):
    """write_ckpt(state=..., params=..., n_shards=...) -> a directory like make_ckpt's, altered."""

    def write(state=None, params=None, n_shards=1):
        state = dict(full_state("mha")) if state is None else state
        params = params_dict(model_args("mha")) if params is None else params
        out = tmp_path / "ckpt"
        shutil.rmtree(out, ignore_errors=True)
        save_checkpoint(state, {}, out, n_shards)
        (out / "params.json").write_text(params if isinstance(params, str) else json.dumps(params))
        return out

    return write


# --- checkpoint directory and params.json -------------------------------------------------------


def test_missing_ckpt_dir_names_the_path_and_what_belongs_there(tmp_path, tokenizer_path):
    with pytest.raises(
        MissingFileError, match=r"checkpoint directory '.*nowhere' not found; name a folder with params.json"
    ):
        build_from(tmp_path / "nowhere", tokenizer_path)


def test_ckpt_dir_that_is_a_file_is_named_as_such(tmp_path, tokenizer_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(MissingFileError, match="is a file, not a directory"):
        build_from(tmp_path / "f", tokenizer_path)


def test_ckpt_dir_without_pth_files(tmp_path, tokenizer_path):
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(MissingFileError, match=r"no \*\.pth checkpoint files in '.*'; expected consolidated\.00\.pth"):
        build_from(tmp_path, tokenizer_path)


def test_missing_params_json(write_ckpt, tokenizer_path):
    ckpt = write_ckpt()
    (ckpt / "params.json").unlink()
    with pytest.raises(MissingFileError, match="params.json not found in .*; it comes with the weights"):
        build_from(ckpt, tokenizer_path)


def test_params_json_that_is_not_json(write_ckpt, tokenizer_path):
    with pytest.raises(ConfigError, match=r"params\.json' is not valid JSON \(Expecting"):
        build_from(write_ckpt(params='{"dim": 64,'), tokenizer_path)


GOOD = params_dict(model_args("mha"))  # dim 64, n_heads 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dim": 66}, "dim=66 is not divisible by n_heads=4"),
        ({"dim": 60}, "head size dim / n_heads = 15 is odd"),
        ({"n_kv_heads": 3}, "n_heads=4 is not divisible by n_kv_heads=3"),
        ({"n_layers": 0}, "n_layers must be > 0, got 0"),
        ({"n_heads": -4}, "n_heads must be > 0, got -4"),
        ({"vocab_size": 0}, r"vocab_size must be > 0 \(or -1: take it from the tokenizer\), got 0"),
        ({"norm_eps": -1e-5}, "norm_eps must be > 0, got -1e-05"),
        ({"dim": "64"}, "dim must be an integer, got '64'"),
        ({"dim": 64.0}, "dim must be an integer, got 64.0"),
        ({"n_layers": True}, "n_layers must be an integer, got True"),
        ({"norm_eps": "small"}, "norm_eps must be a number, got 'small'"),
        ({"ffn_dim_multiplier": [1.3]}, r"ffn_dim_multiplier must be a number or null, got \[1.3\]"),
        ({"rope_theta": float("nan")}, "rope_theta must be > 0, got nan"),
        ({"foo": 1, "bar": 2}, r"has unknown keys \['bar', 'foo'\]; known keys: \['dim'"),
    ],
)
def test_inconsistent_params_json_names_the_keys(write_ckpt, tokenizer_path, change, message):
    with pytest.raises(ConfigError, match=message):
        build_from(write_ckpt(params={**GOOD, **change}), tokenizer_path)


def test_params_json_must_be_an_object(write_ckpt, tokenizer_path):
    with pytest.raises(ConfigError, match="must hold a JSON object, got list"):
        build_from(write_ckpt(params="[1, 2]"), tokenizer_path)


def test_params_are_checked_before_any_shard_is_read(write_ckpt, tokenizer_path):
    ckpt = write_ckpt(params={**GOOD, "dim": 66})
    (ckpt / "consolidated.00.pth").write_bytes(b"garbage")  # would fail too, but later
    with pytest.raises(ConfigError, match="dim=66"):
        build_from(ckpt, tokenizer_path)


# --- tokenizer ----------------------------------------------------------------------------------


def test_missing_tokenizer_names_the_path_and_the_flag(make_ckpt, tmp_path):
    with pytest.raises(MissingFileError, match=r"tokenizer file '.*tok\.model' not found; pass --tokenizer_path"):
        build_from(make_ckpt("mha"), tmp_path / "tok.model")


def test_tokenizer_path_that_is_a_directory(make_ckpt, tmp_path):
    with pytest.raises(MissingFileError, match="is a directory, not a file"):
        build_from(make_ckpt("mha"), tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"\x08\x96\x01" + bytes(range(256))])
def test_a_file_that_is_not_a_sentencepiece_model(make_ckpt, tmp_path, content):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"tokenizer\.model' is not a SentencePiece model .*pass the tokenizer"):
        Tokenizer(str(path))


def test_a_path_of_the_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="tokenizer_path must be a path \\(str\\), got int 3"):
        Tokenizer(3)


# --- shards -------------------------------------------------------------------------------------


def test_truncated_shard_names_the_file(write_ckpt, tokenizer_path):
    ckpt = write_ckpt(n_shards=2)
    shard = ckpt / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(
        CheckpointError,
        match=r"cannot read checkpoint '.*consolidated\.01\.pth' \(1000 bytes\): "
        r"truncated, corrupted .*download it again",
    ):
        build_from(ckpt, tokenizer_path)


def test_empty_shard_says_it_is_empty(write_ckpt, tokenizer_path):
    ckpt = write_ckpt()
    (ckpt / "consolidated.00.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"\(0 bytes\).*the file is empty"):
        build_from(ckpt, tokenizer_path)


def test_missing_weight_is_named(write_ckpt, tokenizer_path, full_state):
    state = dict(full_state("mha"))
    del state["layers.1.feed_forward.w2.weight"]
    with pytest.raises(CheckpointError, match=r"missing weights \['layers\.1\.feed_forward\.w2\.weight'\]"):
        build_from(write_ckpt(state=state), tokenizer_path)


def test_weights_of_an_extra_layer_are_unexpected(write_ckpt, tokenizer_path, full_state):
    state = dict(full_state("mha"))
    state["layers.2.attention_norm.weight"] = torch.ones(64)
    with pytest.raises(CheckpointError, match=r"unexpected weights \['layers\.2\.attention_norm\.weight'\].*n_layers"):
        build_from(write_ckpt(state=state), tokenizer_path)


def test_weight_of_an_unknown_module_is_unexpected(write_ckpt, tokenizer_path, full_state):
    state = {**full_state("mha"), "lm_head.weight": torch.ones(2, 2)}
    with pytest.raises(CheckpointError, match=r"unexpected weight 'lm_head\.weight'.*not part of the Llama"):
        build_from(write_ckpt(state=state), tokenizer_path)


def test_shape_that_disagrees_with_params_json(write_ckpt, tokenizer_path, full_state):
    state = dict(full_state("mha"))
    state["layers.0.attention.wq.weight"] = torch.zeros(32, 64)
    with pytest.raises(
        CheckpointError,
        match=r"weight layers\.0\.attention\.wq\.weight has shape \(32, 64\) "
        r"but params\.json implies \(64, 64\)",
    ):
        build_from(write_ckpt(state=state), tokenizer_path)


def test_embedding_rows_that_disagree_with_the_tokenizer(write_ckpt, tokenizer_path, full_state):
    state = dict(full_state("mha"))
    state["tok_embeddings.weight"] = state["tok_embeddings.weight"][:500]
    with pytest.raises(CheckpointError, match="the embedding has 500 rows but the tokenizer has 512 words"):
        build_from(write_ckpt(state=state), tokenizer_path)


class Hostile:
    """Unpickling this calls os.system, which touches a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_that_would_run_code_is_refused_and_never_runs(
    write_ckpt, tokenizer_path, full_state, tmp_path, zip_format
):
    ckpt = write_ckpt()
    marker = tmp_path / "pwned"
    state = {**full_state("mha"), "extra": Hostile(marker)}
    torch.save(state, ckpt / "consolidated.00.pth", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(
        CheckpointError,
        match=r"refused to load '.*consolidated\.00\.pth': unpickling it would "
        r"import (posix|nt|os)\.system, which could run code",
    ):
        build_from(ckpt, tokenizer_path)
    assert not marker.exists()


# --- build arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("max_seq_len", 0),
        ("max_seq_len", -8),
        ("max_seq_len", "abc"),
        ("max_seq_len", 8.5),
        ("max_batch_size", 0),
        ("max_batch_size", True),
    ],
)
def test_sizes_must_be_positive_integers(make_ckpt, tokenizer_path, name, value):
    kw = {"max_seq_len": 64, "max_batch_size": 4, name: value}
    with pytest.raises(ConfigError, match=f"{name} must be a whole number > 0, got {value!r}"):
        build_from(make_ckpt("mha"), tokenizer_path, **kw)


def test_seed_must_be_an_integer(make_ckpt, tokenizer_path):
    with pytest.raises(ConfigError, match="seed must be an integer, got 'one'"):
        build_from(make_ckpt("mha"), tokenizer_path, seed="one")


def test_a_kv_cache_beyond_the_machine_is_refused_before_allocating(make_ckpt, tokenizer_path):
    with pytest.raises(
        ConfigError,
        match=r"max_batch_size=4 x max_seq_len=1000000000000 needs [\d.]+ GiB per process"
        r" for its rotary tables, more than the [\d.]+ GiB of cpu; lower max_seq_len",
    ):
        build_from(make_ckpt("mha"), tokenizer_path, max_seq_len=10**12)


def test_out_of_memory_while_loading_names_the_sizes(make_ckpt, tokenizer_path, monkeypatch):
    def fail(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(loading, "load_model", fail)
    with pytest.raises(
        ConfigError,
        match=r"out of memory on cpu while loading the model \(its KV cache takes "
        r"[\d.]+ GiB for max_batch_size=4 x max_seq_len=64\); lower max_seq_len",
    ):
        build_from(make_ckpt("mha"), tokenizer_path)


# --- generation arguments -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(build):
    return build("mha", max_seq_len=32, max_batch_size=4)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"temperature": -0.1}, r"temperature must be a number >= 0 \(0 = greedy\), got -0.1"),
        ({"temperature": math.nan}, "temperature must be a number >= 0 .*got nan"),
        ({"temperature": "hot"}, "temperature must be a number >= 0 .*got 'hot'"),
        ({"top_p": 0}, r"top_p must be a number in \(0, 1\], got 0"),
        ({"top_p": 1.5}, r"top_p must be a number in \(0, 1\], got 1.5"),
        ({"max_gen_len": -1}, "max_gen_len must be an integer >= 0, got -1"),
        ({"max_gen_len": 2.5}, "max_gen_len must be an integer >= 0, got 2.5"),
    ],
)
def test_sampling_settings_out_of_range(llama, kw, message):
    with pytest.raises(ConfigError, match=message):
        llama.text_completion(["hello"], **{"max_gen_len": 2, **kw})


def test_prompt_longer_than_max_seq_len_gives_both_lengths(llama):
    with pytest.raises(ConfigError, match=r"prompt 2 \(index 1\) has 40 tokens, more than max_seq_len=32"):
        llama.generate([[1, 5], [1] * 40], max_gen_len=2)


def test_prompt_that_is_not_a_string(llama):
    with pytest.raises(TypeError, match="a prompt must be a str, got int: 42"):
        llama.text_completion([42], max_gen_len=2)


def test_a_single_string_instead_of_a_list(llama):
    with pytest.raises(TypeError, match="prompts must be a list of strings, got a single str"):
        llama.text_completion("hello", max_gen_len=2)


def test_empty_prompt_lists_give_empty_results(llama):
    assert llama.text_completion([]) == []
    assert llama.chat_completion([]) == []
    assert llama.generate([], max_gen_len=4) == ([], None)


@pytest.mark.parametrize(
    "prompt_tokens, error, message",
    [
        ([[1, 600]], ConfigError, r"prompt_tokens\[0\] holds 600, not a token id of this tokenizer \(0 \.\. 511\)"),
        ([[1, -1]], ConfigError, r"prompt_tokens\[0\] holds -1"),
        ([[1, 2.0]], ConfigError, r"prompt_tokens\[0\] holds 2.0"),
        ([[1], []], ConfigError, r"prompt_tokens\[1\] is empty"),
        (["hello"], TypeError, r"prompt_tokens\[0\] must be a list of token ids, got str"),
        ("hello", TypeError, "prompt_tokens must be a list of token-id lists, got str"),
    ],
)
def test_prompt_tokens_are_checked(llama, prompt_tokens, error, message):
    with pytest.raises(error, match=message):
        llama.generate(prompt_tokens, max_gen_len=2)


# --- chat ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dialog, message",
    [
        (
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            r"dialog 1: message 2 has role 'user' but 'assistant' was expected; .*alternate user, assistant",
        ),
        (
            [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
            r"message 1 has role 'assistant' but 'user' was expected",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
            r"message 2 has role 'system' but 'assistant' was expected",
        ),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
            r"dialog 1 ends with role 'assistant'; the last message must be from the user",
        ),
        (
            [{"role": "bot", "content": "a"}],
            r"dialog 1, message 1: unknown role 'bot'; use one of \('system', 'user', 'assistant'\)",
        ),
        ([{"role": "system", "content": "s"}], "a dialog with a system message needs a user message after it"),
        ([{"role": "user"}], r"dialog 1, message 1: expected \{'role': \.\.\., 'content': \.\.\.\}"),
    ],
)
def test_malformed_dialogs(llama, dialog, message):
    with pytest.raises(ConfigError, match=message):
        llama.chat_completion([dialog], max_gen_len=2)


def test_a_single_dialog_instead_of_a_list_of_dialogs(llama):
    with pytest.raises(ConfigError, match="dialog 1 must be a non-empty list of messages.*takes a list of dialogs"):
        llama.chat_completion([{"role": "user", "content": "hi"}], max_gen_len=2)


# --- non-finite logits --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory, tokenizer_path, full_state):
    """An fp16 model whose output projection overflows float16 (|logit| > 65504)."""
    state = dict(full_state("mha"))
    state["output.weight"] = state["output.weight"] * 1e5
    out = tmp_path_factory.mktemp("overflow")
    save_checkpoint(state, params_dict(model_args("mha")), out)
    return build_from(out, tokenizer_path, max_seq_len=16, max_batch_size=1, dtype="float16")


@pytest.mark.parametrize("temperature", [0.0, 0.6])
def test_fp16_overflow_names_the_dtype_and_the_fix(overflowing, temperature):
    with pytest.raises(
        GenerationError,
        match=r"non-finite logits \(inf or nan\) with float16 weights; float16 "
        r"overflowed: run with --dtype bfloat16 or --dtype float32",
    ):
        overflowing.text_completion(["hello"], max_gen_len=2, temperature=temperature)


def test_greedy_decoding_that_syncs_rarely_still_reports_non_finite_logits(overflowing, monkeypatch):
    monkeypatch.setattr(overflowing, "eos_check_every", 16)  # as on accelerators: checked with eos, not per step
    with pytest.raises(GenerationError, match="non-finite logits"):
        overflowing.text_completion(["hello"], max_gen_len=3, temperature=0)


@pytest.mark.parametrize("native_steps", [True, False])
def test_nan_logits_in_float32_point_at_the_checkpoint(tmp_path, tokenizer_path, full_state, native_steps):
    state = dict(full_state("mha"))
    state["layers.1.feed_forward.w2.weight"] = state["layers.1.feed_forward.w2.weight"].clone()
    state["layers.1.feed_forward.w2.weight"][0, 0] = math.nan  # a damaged download
    save_checkpoint(state, params_dict(model_args("mha")), tmp_path)
    llama = build_from(tmp_path, tokenizer_path, max_seq_len=16, max_batch_size=1, dtype="float32")
    if not native_steps:
        llama = Llama(llama.model, llama.tokenizer)
    with pytest.raises(GenerationError, match="with float32 weights; the checkpoint probably holds inf/nan weights"):
        llama.text_completion(["hello"], max_gen_len=2)


# --- one rank's failure reaches all -------------------------------------------------------------


def test_a_single_process_reraises_its_own_error():
    def step():
        raise CheckpointError("bad shard")

    with pytest.raises(CheckpointError, match="bad shard"):
        ranks.on_all_ranks(step)


class FakeGroup:
    """Stands in for torch.distributed with `outcomes` from the other ranks."""

    def __init__(self, rank, peer_outcomes, fail=False):
        self.rank, self.peer_outcomes, self.fail = rank, peer_outcomes, fail

    def install(self, monkeypatch):
        monkeypatch.setattr(ranks.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(ranks.dist, "get_world_size", lambda: 1 + len(self.peer_outcomes))
        monkeypatch.setattr(ranks.dist, "all_gather_object", self.all_gather_object)

    def all_gather_object(self, out, obj):
        if self.fail:
            raise RuntimeError("Connection closed by peer")
        peers = iter(self.peer_outcomes)
        for r in range(len(out)):
            out[r] = obj if r == self.rank else next(peers)


def test_rank_0_raises_the_error_of_the_rank_that_failed(monkeypatch):
    FakeGroup(0, [None, "cannot read 'consolidated.02.pth'", "other"]).install(monkeypatch)
    with pytest.raises(RankError, match=r"^rank 2: cannot read 'consolidated\.02\.pth' \(and 1 more ranks failed\)$"):
        ranks.on_all_ranks(lambda: "model")


def test_all_ranks_succeeding_returns_the_result(monkeypatch):
    FakeGroup(0, [None]).install(monkeypatch)
    assert ranks.on_all_ranks(lambda x: x + 1, 1) == 2


def test_a_rank_that_cannot_reach_its_peers_reports_its_own_error(monkeypatch):
    FakeGroup(1, [None], fail=True).install(monkeypatch)

    def step():
        raise CheckpointError("cannot read 'consolidated.01.pth'")

    with pytest.raises(CheckpointError) as info:
        ranks.on_all_ranks(step)
    assert getattr(info.value, ranks.REPORT_ON_ANY_RANK) is True


def test_errors_are_typed_and_catchable_as_builtins():
    assert issubclass(ConfigError, ValueError) and issubclass(CheckpointError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(GenerationError, RuntimeError)
    assert all(issubclass(e, LlamaError) for e in (ConfigError, CheckpointError, MissingFileError, RankError))
