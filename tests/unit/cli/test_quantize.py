"""`python -m llama.quantize SRC DST --int8|--int4`: the quantized checkpoint it writes, how
Llama.build loads it, and what is refused (the command run as a process: tests/e2e/test_quantize_cli.py)."""

import json
import shutil

import pytest
import torch

from llama import Llama
from llama.cli.convert import convert
from llama.cli.quantize import quantize_checkpoint
from llama.errors import CheckpointError, ConfigError

PROMPTS = ["The quick brown fox", "A"]


@pytest.fixture(scope="module")
def quantized(make_ckpt, tmp_path_factory):
    """method -> (the one-shard mha checkpoint quantized by the tool, that of the two-shard one)."""
    out = {}
    for method in ("int8", "int4"):
        dirs = []
        for shards in (1, 2):
            dst = tmp_path_factory.mktemp(f"{method}-{shards}") / "quantized"
            quantize_checkpoint(make_ckpt("mha", shards), dst, method)
            dirs.append(dst)
        out[method] = dirs
    return out


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_a_quantized_checkpoint_loads_as_the_float_one_quantized_while_loading(
    build, quantized, tokenizer_path, method
):
    params = json.loads((quantized[method][0] / "params.json").read_text())
    assert params["quantization"] == ({"method": "int4", "group_size": 32} if method == "int4" else {"method": "int8"})
    stored = Llama.build(str(quantized[method][0]), str(tokenizer_path), 64, 4, device="cpu", dtype="float32")
    live = build("mha", quantize=method)
    for key, tensor in live.model.state_dict().items():
        assert torch.equal(tensor, stored.model.state_dict()[key]), key
    prompts = [live.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    assert stored.generate(prompts, 8, temperature=0)[0] == live.generate(prompts, 8, temperature=0)[0]


def test_the_int4_checkpoint_is_about_a_seventh_of_the_float32_one(make_ckpt, quantized):
    size = lambda d: sum(p.stat().st_size for p in d.glob("*.pth"))  # noqa: E731
    # The tiny model's embedding (kept in float32) is a third of it; its linear weights shrink 7.1x.
    assert size(quantized["int4"][0]) < 0.45 * size(make_ckpt("mha", 1))


def test_a_quantized_checkpoint_runs_as_stored(quantized, tokenizer_path):
    one, two = (str(d) for d in quantized["int4"])
    with pytest.raises(
        ConfigError,
        match=r"is quantized to int4; it cannot be loaded with quantize='int8': "
        r"leave quantize unset \(or 'int4'\), or quantize the float checkpoint instead",
    ):
        Llama.build(one, str(tokenizer_path), 64, 4, device="cpu", quantize="int8")
    with pytest.raises(
        ConfigError,
        match=r"is quantized to int4 with 2 shard\(s\) and cannot be resharded to 1 processes; "
        r"run 2 process\(es\), or quantize a float checkpoint with 1 shard\(s\)",
    ):
        Llama.build(two, str(tokenizer_path), 64, 4, device="cpu")


def test_an_unknown_marker_is_refused(make_ckpt, tmp_path, tokenizer_path):
    for f in make_ckpt("mha", 1).iterdir():
        (tmp_path / f.name).symlink_to(f)
    params = json.loads((make_ckpt("mha", 1) / "params.json").read_text())
    (tmp_path / "params.json").unlink()
    (tmp_path / "params.json").write_text(json.dumps({**params, "quantization": {"method": "int3"}}))
    with pytest.raises(
        CheckpointError,
        match=r"quantization=\{'method': 'int3'\} is not a quantization this version "
        r'reads \(\{"method": "int8"\}, \{"method": "int4", "group_size": 32\}\)',
    ):
        Llama.build(str(tmp_path), str(tokenizer_path), 64, 4, device="cpu")


@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("with_original", [True, False], ids=["original-params", "config-only"])
def test_a_hugging_face_folder_quantizes_to_what_its_meta_checkpoint_does(
    make_ckpt, quantized, tokenizer_path, tmp_path, method, with_original
):
    hf_dir = convert(make_ckpt("mha", 1), tmp_path / "hf")  # config.json + model.safetensors (q/k rows reordered)
    if not with_original:  # as transformers' save_pretrained writes it: params come from config.json
        shutil.rmtree(hf_dir / "original")
    written = quantize_checkpoint(hf_dir, tmp_path / "q", method)
    assert written == [tmp_path / "q" / "consolidated.00.pth"]
    from_meta = quantized[method][0]
    if with_original:  # Meta's params.json, kept by convert, comes back verbatim
        assert (tmp_path / "q" / "params.json").read_text() == (from_meta / "params.json").read_text()
    got = torch.load(written[0], weights_only=True)
    want = torch.load(from_meta / "consolidated.00.pth", weights_only=True)
    assert sorted(got) == sorted(k for k in want if k != "rope.freqs")  # Meta's names, in Meta's q/k row order
    for key, tensor in got.items():
        assert torch.equal(tensor, want[key]), key
    tokens = []
    for folder in (tmp_path / "q", from_meta):
        llama = Llama.build(str(folder), str(tokenizer_path), 64, 4, device="cpu", dtype="float32")
        prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
        tokens.append(llama.generate(prompts, 8, temperature=0)[0])
    assert tokens[0] == tokens[1]
