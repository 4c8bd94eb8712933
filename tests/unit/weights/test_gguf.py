"""A GGUF file (llama.cpp's format), or a folder of them, is refused by name wherever a checkpoint
folder is expected: by quantize, convert, reshard and Llama.build, not sent to download.sh."""

import shutil
import sys

import pytest

from llama import Llama
from llama.cli import convert, quantize, reshard
from llama.cli.run import run
from llama.errors import CheckpointError


def refusal(path) -> str:
    return (
        f"GGUF is not supported yet: {str(path)!r} is a GGUF file (llama.cpp's format); use the original weights "
        "instead: a Meta checkpoint folder (params.json + consolidated.*.pth, e.g. from download.sh) or a "
        "Hugging Face one (config.json + *.safetensors)"
    )


@pytest.fixture
def gguf_dir(tmp_path):
    folder = tmp_path / "llama-2-7b-gguf"
    folder.mkdir()
    (folder / "README.md").write_text("from the hub\n")
    (folder / "llama-2-7b.Q4_0.gguf").write_bytes(b"GGUF" + bytes(28))
    return folder


TOOL_ARGS = [(quantize, ["--int4"]), (convert, []), (reshard, ["--shards", "2"])]


@pytest.mark.parametrize("tool, flags", TOOL_ARGS, ids=["quantize", "convert", "reshard"])
@pytest.mark.parametrize("name_the_file", [False, True])
def test_each_tool_names_the_gguf_file_in_one_error_line(
    gguf_dir, tmp_path, monkeypatch, capsys, tool, flags, name_the_file
):
    gguf = gguf_dir / "llama-2-7b.Q4_0.gguf"
    monkeypatch.setattr(
        sys, "argv", [tool.__name__, str(gguf if name_the_file else gguf_dir), str(tmp_path / "out"), *flags]
    )
    with pytest.raises(SystemExit) as info:
        run(tool.main, tool.FLAGS)
    captured = capsys.readouterr()
    assert (info.value.code, captured.out, captured.err) == (1, "", f"error: {refusal(gguf)}\n")
    assert not (tmp_path / "out").exists()


def test_llama_build_names_the_gguf_file(gguf_dir, tokenizer_path):
    with pytest.raises(CheckpointError) as info:
        Llama.build(str(gguf_dir), str(tokenizer_path), 64, 4, device="cpu")
    assert str(info.value) == refusal(gguf_dir / "llama-2-7b.Q4_0.gguf")


def test_a_gguf_file_beside_meta_weights_is_left_alone(make_ckpt, tokenizer_path, tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(make_ckpt("mha"), folder)
    (folder / "model.gguf").write_bytes(b"GGUF" + bytes(28))
    Llama.build(str(folder), str(tokenizer_path), 64, 4, device="cpu")
