"""Hugging Face checkpoints: config.json -> params.json, loading per rank, and llama.cli.convert
(the command run as a process: tests/e2e/test_convert_cli.py).

The Hugging Face directories are written by transformers itself (save_pretrained), from small
random configs whose weights are scaled up so that greedy decoding has clear winners.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from llama.cli.convert import convert
from llama.errors import CheckpointError, ConfigError, MissingFileError
from llama.layers.plan import LLAMA2_PLAN, split_dim
from llama.testing.synthetic import TINY_VOCAB as VOCAB_SIZE
from llama.weights import hf, hf_config
from support.helpers import REPO, assert_nothing_written

transformers = pytest.importorskip("transformers")

PROMPT = "def fibonacci(n): return the sum of"
pytestmark = pytest.mark.usefixtures("one_thread")

# Llama 2's shape (multi-head attention), and GQA with tied embeddings as in Llama 3.2 1B.
HF_CONFIGS = {
    "llama2": dict(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    "gqa_tied": dict(
        hidden_size=64,
        intermediate_size=224,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
}
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def hf_model(name: str, seed: int = 0, **overrides):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB_SIZE, **{"max_position_embeddings": 128, **HF_CONFIGS[name], **overrides}
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "eager"
    # transformers' 0.02-std init gives near-uniform logits; these give clear, varied greedy picks.
    # Tied, the embedding is also the output layer: kept small, and the blocks loud, or the model
    # just repeats its last input token.
    gains = {"lm_head": 4.0, "o_proj": 3.0, "down_proj": 3.0}
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "embed_tokens" in pname:
                p.copy_(torch.randn_like(p) * (0.2 if config.tie_word_embeddings else 1.0))
            else:
                gain = next((g for part, g in gains.items() if part in pname), 1.0)
                p.copy_(torch.randn_like(p) * gain / math.sqrt(p.shape[1]))
    return model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """hf_dir(name) -> (directory saved by transformers, the model); llama2 is sharded over several files."""
    cache = {}

    def make(name: str):
        if name not in cache:
            model = hf_model(name)
            out = tmp_path_factory.mktemp(f"hf-{name}")
            model.save_pretrained(out, safe_serialization=True, max_shard_size="60KB" if name == "llama2" else "5GB")
            cache[name] = (out, model)
        return cache[name]

    return make


def copy_of(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "copy"))


def llama_build(ckpt_dir, tokenizer_path):
    from llama import Llama

    return Llama.build(str(ckpt_dir), str(tokenizer_path), 64, 2, device="cpu", dtype="float32")


def hf_greedy(model, prompt, n):
    """transformers' greedy tokens and the log-prob of each."""
    seq, logprobs = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq])).logits[0, -1].float()
            nxt = int(logits.argmax())
            logprobs.append(float(torch.log_softmax(logits, -1)[nxt]))
            seq.append(nxt)
    return seq[len(prompt) :], logprobs


# -- config.json -> params.json ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dim, hidden, expected",
    [
        (4096, 11008, {"multiple_of": 256}),  # Llama 2 7B
        (8192, 28672, {"multiple_of": 4096, "ffn_dim_multiplier": 1.3}),  # Llama 2 / 3 70B
        (4096, 14336, {"multiple_of": 1024, "ffn_dim_multiplier": 1.3}),  # Llama 3 8B
        (2048, 8192, {"multiple_of": 256, "ffn_dim_multiplier": 1.5}),  # Llama 3.2 1B
        (64, 224, {"multiple_of": 32, "ffn_dim_multiplier": 1.3}),
        (3072, 8192, {"multiple_of": 256, "ffn_dim_multiplier": 1.0}),  # Llama 3.2 3B
        (16384, 53248, {"multiple_of": 4096, "ffn_dim_multiplier": 1.2}),  # Llama 3.1 405B
        (64, 100, {"multiple_of": 4, "ffn_dim_multiplier": 0.59}),  # no Meta model: the shortest exact multiplier
    ],
)
def test_intermediate_size_becomes_meta_ffn_params_that_reproduce_it(dim, hidden, expected):
    params = hf_config.ffn_params(dim, hidden)
    assert params == expected
    assert hf_config.ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier")) == hidden


def test_llama3_rope_scaling_config_becomes_params_json_with_use_scaled_rope(hf_dir, tmp_path):
    model = hf_model("gqa_tied", rope_scaling=LLAMA3_ROPE, max_position_embeddings=131072)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    convert(tmp_path / "hf", tmp_path / "meta")
    assert json.loads((tmp_path / "meta" / "params.json").read_text()) == {
        "dim": 64,
        "n_layers": 2,
        "n_heads": 8,
        "n_kv_heads": 2,
        "vocab_size": VOCAB_SIZE,
        "multiple_of": 32,
        "ffn_dim_multiplier": 1.3,
        "norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "use_scaled_rope": True,
    }
    assert hf_config.tie_word_embeddings(tmp_path / "hf") is True


def base_config(**overrides):
    config = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 512,
        "rope_scaling": dict(LLAMA3_ROPE),
    }
    config.update(overrides)
    return config


def test_rope_factor_other_than_metas_8_is_kept_as_rope_scaling_factor():
    params = hf_config.params_from_config(base_config(rope_scaling={**LLAMA3_ROPE, "factor": 32.0}), "config.json")
    assert params["use_scaled_rope"] is True and params["rope_scaling_factor"] == 32.0


@pytest.mark.parametrize(
    "rope, message",
    [
        (
            {**LLAMA3_ROPE, "low_freq_factor": 2.0},
            "config.json: rope_scaling.low_freq_factor is 2.0; this version supports only Meta's Llama 3.1 value 1",
        ),
        (
            {**LLAMA3_ROPE, "original_max_position_embeddings": 4096},
            "config.json: rope_scaling."
            "original_max_position_embeddings is 4096; this version supports only Meta's Llama 3.1 value 8192",
        ),
        (
            {"rope_type": "yarn", "factor": 4.0},
            "config.json: rope_scaling type 'yarn' is not supported; Meta's Llama uses no scaling or type 'llama3'",
        ),
    ],
)
def test_unsupported_rope_scaling_is_refused_naming_the_key(rope, message):
    with pytest.raises(ConfigError) as err:
        hf_config.params_from_config(base_config(rope_scaling=rope), "config.json")
    assert str(err.value) == message


# -- loading per rank ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama2", "gqa_tied"])
def test_two_ranks_slices_concatenate_to_the_full_load(hf_dir, name):
    ckpt, model = hf_dir(name)
    params = hf_config.params_from_hf_dir(ckpt)
    full = hf.load_rank_state(ckpt, params, SPLIT, 1, 0)
    parts = [hf.load_rank_state(ckpt, params, SPLIT, 2, rank) for rank in range(2)]
    for key, tensor in full.items():
        dim = SPLIT(key)
        joined = parts[0][key] if dim is None else torch.cat([parts[0][key], parts[1][key]], dim)
        assert torch.equal(joined, tensor), key
    assert torch.equal(full["output.weight"], model.lm_head.weight)  # tied: the embedding itself


def test_loading_never_writes_to_the_checkpoint_files(hf_dir):
    ckpt, _ = hf_dir("llama2")
    before = {p.name: p.read_bytes() for p in ckpt.glob("*.safetensors")}
    state = hf.load_rank_state(ckpt, hf_config.params_from_hf_dir(ckpt), SPLIT, 1, 0)
    assert state["layers.0.attention.wq.weight"].abs().sum() > 0  # q/k rows were reordered in memory
    assert {p.name: p.read_bytes() for p in ckpt.glob("*.safetensors")} == before


SPLIT = partial(split_dim, LLAMA2_PLAN)

PEAK_RSS = r"""
import sys
from functools import partial
from pathlib import Path
from llama.weights import hf, hf_config
from llama.layers.plan import LLAMA2_PLAN, split_dim
SPLIT = partial(split_dim, LLAMA2_PLAN)

def rss_and_peak():
    f = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(f["VmRSS"].split()[0]) * 1024, int(f["VmHWM"].split()[0]) * 1024

def load(ckpt):
    state = hf.load_rank_state(ckpt, hf_config.params_from_hf_dir(ckpt), SPLIT, 1, 0)
    return sum(float(t.sum()) for t in state.values())  # touches every weight

load(sys.argv[2])  # a tiny model first: imports and allocator warm-up are not the checkpoint's cost
Path("/proc/self/clear_refs").write_text("5")
rss, _ = rss_and_peak()
load(sys.argv[1])
print("GROWTH", rss_and_peak()[1] - rss)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_peak_memory_while_loading_stays_within_115_percent_of_the_checkpoint(tmp_path, hf_dir):
    from safetensors.torch import save_file

    from llama.model import ModelArgs
    from llama.testing.synthetic import params_dict, random_state

    # Multi-head attention: q and k are the largest share that must be reordered (16% here).
    args = ModelArgs(dim=256, n_layers=16, n_heads=4, multiple_of=32, vocab_size=VOCAB_SIZE)
    state = {k: t for k, t in random_state(args).items() if k != "rope.freqs"}
    tensors, config = hf.to_hf(state, {**params_dict(args), "vocab_size": VOCAB_SIZE})
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    size = (tmp_path / "model.safetensors").stat().st_size
    assert size > 50e6
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(tmp_path), str(hf_dir("gqa_tied")[0])],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "", "OMP_NUM_THREADS": "1"},
    ).stdout
    growth = int(next(line for line in out.splitlines() if line.startswith("GROWTH")).split()[1])
    print(f"peak load growth {growth / size:.3f}x the checkpoint")
    assert growth <= 1.15 * size, f"{growth / size:.3f}x the checkpoint"


# -- conversion and parity with transformers -----------------------------------------------------


@pytest.mark.parametrize("name", ["llama2", "gqa_tied"])
def test_converted_hf_checkpoint_decodes_like_transformers(hf_dir, tokenizer_path, tmp_path, name):
    ckpt, model = hf_dir(name)
    convert(ckpt, tmp_path / "meta", shards=2)
    assert sorted(p.name for p in (tmp_path / "meta").iterdir()) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
    ]
    llama = llama_build(tmp_path / "meta", tokenizer_path)
    prompt = llama.tokenizer.encode(PROMPT, bos=True, eos=False)
    tokens, logprobs = llama.generate([prompt], max_gen_len=10, temperature=0, logprobs=True)
    want_tokens, want_logprobs = hf_greedy(model, prompt, 10)
    assert len(set(want_tokens)) > 5 and tokens[0] == want_tokens  # varied, not a repeated token
    assert torch.allclose(torch.tensor(logprobs[0]), torch.tensor(want_logprobs), rtol=0, atol=1e-4)


def test_metas_own_model_code_loads_what_to_meta_writes(hf_dir, build, tmp_path):
    # Meta's Llama 3 Transformer (llama-models, same names and shapes as Llama 2's) with strict loading:
    # every key and shape of the converted consolidated.00.pth is what Meta's code expects.
    from llama_models.llama3.args import ModelArgs as MetaArgs
    from llama_models.llama3.model import Transformer as MetaTransformer

    build("mha")  # sets up the process group and fairscale's model-parallel groups Meta's code reads
    out = convert(hf_dir("gqa_tied")[0], tmp_path / "meta")
    params = json.loads((out / "params.json").read_text())
    state = torch.load(out / "consolidated.00.pth", weights_only=True)
    model = MetaTransformer(MetaArgs(**params, max_seq_len=16, max_batch_size=1))
    model.load_state_dict({k: v for k, v in state.items() if k != "rope.freqs"}, strict=True)
    tokens = torch.tensor([[1, 5, 9]])
    torch.testing.assert_close(model.forward(tokens, 0), hf_dir("gqa_tied")[1](tokens).logits, rtol=0, atol=1e-4)


def test_transformers_loads_what_to_hf_writes(make_ckpt, build, tmp_path):
    out = convert(make_ckpt("gqa", 2), tmp_path / "hf", max_shard_size="100KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2
    model = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    model.config._attn_implementation = "eager"
    tokens = torch.tensor([[1, 17, 300, 42, 5, 99, 250]])
    with torch.no_grad():
        want = model(tokens).logits
    torch.testing.assert_close(build("gqa").model.forward(tokens, 0), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_meta_to_hf_to_meta_round_trip_is_bit_identical(make_ckpt, tmp_path, dtype):
    src = make_ckpt("mha", 2)
    convert(src, tmp_path / "hf", dtype=dtype)
    convert(tmp_path / "hf", tmp_path / "back", shards=2)
    assert (tmp_path / "back" / "params.json").read_bytes() == (src / "params.json").read_bytes()
    for i in range(2):
        name = f"consolidated.{i:02d}.pth"
        want = torch.load(src / name, weights_only=True)
        got = torch.load(tmp_path / "back" / name, weights_only=True)
        assert list(got) == [k for k in want if k != "rope.freqs"]  # rope.freqs: recomputed, never stored by HF
        for key, tensor in got.items():
            expected = want[key] if dtype is None else want[key].to(torch.bfloat16)
            assert tensor.dtype == expected.dtype and torch.equal(tensor, expected), key


def test_tokenizer_is_copied_from_original_folder(hf_dir, tokenizer_path, tmp_path):
    src = copy_of(hf_dir("gqa_tied")[0], tmp_path)
    (src / "original").mkdir()
    shutil.copyfile(tokenizer_path, src / "original" / "tokenizer.model")
    convert(src, tmp_path / "meta")
    assert (tmp_path / "meta" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()
    convert(tmp_path / "meta", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == tokenizer_path.read_bytes()


# -- refusals: one clear error, nothing written --------------------------------------------------


def break_model_type(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))


def index_file(ckpt, tensor):
    return ckpt / json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def break_shape(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "intermediate_size": 256}))


def add_unknown_tensor(ckpt):
    from safetensors.torch import load_file, save_file

    path = index_file(ckpt, "model.norm.weight")
    tensors = {**load_file(path), "model.layers.0.self_attn.q_norm.weight": torch.ones(8)}
    save_file(tensors, str(path), metadata={"format": "pt"})
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.self_attn.q_norm.weight"] = path.name
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))


BAD_INPUTS = {
    "model_type": (
        break_model_type,
        ConfigError,
        "'{ckpt}/config.json' describes model_type 'mistral', not 'llama'; only Llama checkpoints can be "
        "loaded or converted",
    ),
    "missing_shard": (
        lambda ckpt: index_file(ckpt, "lm_head.weight").unlink(),
        MissingFileError,
        "'{lm_head}', named in '{ckpt}/model.safetensors.index.json', not found; the download is "
        "incomplete: fetch that file",
    ),
    "wrong_shape": (
        break_shape,
        CheckpointError,
        "'{gate}': tensor 'model.layers.0.mlp.gate_proj.weight' has shape [192, 64] but config.json "
        "implies [256, 64]; does config.json belong to these weights?",
    ),
    "truncated": (
        lambda ckpt: os.truncate(index_file(ckpt, "lm_head.weight"), 1000),
        CheckpointError,
        "cannot read '{lm_head}' (1000 bytes): truncated, corrupted or not a safetensors file (Error "
        "while deserializing header: incomplete metadata, file not fully covered); download it again",
    ),
    "unknown_tensor": (
        add_unknown_tensor,
        CheckpointError,
        "'{norm}' holds tensor 'model.layers.0.self_attn.q_norm.weight', which is not part of a "
        "Llama model of this config.json; only unmodified Llama checkpoints (LlamaForCausalLM) can "
        "be loaded",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_hf_input_is_refused_naming_the_file_and_nothing_is_written(hf_dir, tmp_path, case):
    ckpt = copy_of(hf_dir("llama2")[0], tmp_path)
    names = {
        "ckpt": ckpt,
        "lm_head": index_file(ckpt, "lm_head.weight"),
        "norm": index_file(ckpt, "model.norm.weight"),
        "gate": index_file(ckpt, "model.layers.0.mlp.gate_proj.weight"),
    }
    damage, error, message = BAD_INPUTS[case]
    damage(ckpt)
    with pytest.raises(error) as err:
        convert(ckpt, tmp_path / "dst")
    assert str(err.value) == message.format(**names)
    assert_nothing_written(tmp_path / "dst")


def test_a_failure_while_writing_leaves_no_half_written_dst(make_ckpt, tmp_path, monkeypatch):
    def fail_after_one_file(tensors, path, metadata):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", fail_after_one_file)
    with pytest.raises(OSError):
        convert(make_ckpt("mha"), tmp_path / "new")
    assert_nothing_written(tmp_path / "new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    with pytest.raises(OSError):
        convert(make_ckpt("mha"), tmp_path / "old", force=True)
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_converting_to_the_layout_src_already_has_is_refused(make_ckpt, tmp_path):
    with pytest.raises(ConfigError) as err:
        convert(make_ckpt("mha"), tmp_path / "dst", to="meta")
    assert str(err.value) == (
        "SRC is already a Meta checkpoint (--to meta): nothing to convert; to change its shard "
        "count use python -m llama.reshard"
    )
    assert_nothing_written(tmp_path / "dst")


# -- Llama.build straight from a Hugging Face directory ---------------------------------------------


def _direct_parity(ckpt_dir, model, tokenizer_path, n_new=10):
    llama = llama_build(ckpt_dir, tokenizer_path)
    prompt = llama.tokenizer.encode(PROMPT, bos=True, eos=False)
    llama.tokenizer.stop_tokens = []  # compare full-length generations (transformers' loop has no eos here)
    tokens, logprobs = llama.generate([prompt], max_gen_len=n_new, temperature=0, logprobs=True)
    hf_tokens, hf_logprobs = hf_greedy(model, prompt, n_new)
    assert tokens[0] == hf_tokens
    torch.testing.assert_close(torch.tensor(logprobs[0]), torch.tensor(hf_logprobs), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["llama2", "gqa_tied"])
def test_build_runs_a_hugging_face_directory_with_transformers_tokens_and_logprobs(hf_dir, tokenizer_path, name):
    ckpt, model = hf_dir(name)  # llama2: sharded over several files; gqa_tied: no lm_head.weight stored
    _direct_parity(ckpt, model, tokenizer_path)


def test_build_runs_a_llama3_rope_scaled_hugging_face_directory(tmp_path, tokenizer_path):
    model = hf_model("gqa_tied", rope_scaling=LLAMA3_ROPE, max_position_embeddings=131072)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    _direct_parity(tmp_path / "hf", model, tokenizer_path)
    unscaled = hf_model("gqa_tied")  # the same weights without scaling give other numbers: scaling is applied
    with pytest.raises(AssertionError):
        _direct_parity(tmp_path / "hf", unscaled, tokenizer_path)


def test_build_finds_the_tokenizer_next_to_the_weights_or_under_original(hf_dir, tokenizer_path, tmp_path):
    from llama import Llama

    ckpt = copy_of(hf_dir("gqa_tied")[0], tmp_path)
    with pytest.raises(
        MissingFileError,
        match=r"no tokenizer given and none found with the weights \(looked for "
        rf"{ckpt}/tokenizer.model, {ckpt}/original/tokenizer.model, {ckpt}/tokenizer.json\)",
    ):
        Llama.build(str(ckpt), None, 64, 2, device="cpu", dtype="float32")
    (ckpt / "original").mkdir()
    shutil.copy(tokenizer_path, ckpt / "original" / "tokenizer.model")
    assert Llama.build(str(ckpt), None, 64, 2, device="cpu").tokenizer.n_words == VOCAB_SIZE
