"""What every offline tool (quantize, reshard, convert) leaves besides its shards: the progress note
off a terminal (stdout unchanged), the tokenizer files, and the permissions of a normally made folder."""

import os
import shutil
import sys

import pytest

from llama.cli import convert, quantize, reshard
from llama.cli.run import run
from llama.runtime import progress

pytestmark = pytest.mark.usefixtures("one_thread")

TOOLS = {
    "quantize": (
        quantize,
        ["--int8"],
        "wrote 2 int8 shard(s) and params.json to {dst}\n",
        ["quantizing consolidated.00.pth to int8", "quantizing consolidated.01.pth to int8"],
        ["consolidated.00.pth", "consolidated.01.pth", "params.json"],
    ),
    "reshard": (
        reshard,
        ["--shards", "1"],
        "wrote 1 shards and params.json to {dst}\n",
        ["resharding into 1 shards"],
        ["consolidated.00.pth", "params.json"],
    ),
    "convert": (
        convert,
        [],
        "wrote Hugging Face checkpoint to {dst}\n",
        ["converting to Hugging Face's layout"],
        ["config.json", "model.safetensors", "original", "original/params.json"],
    ),
}
TOKENIZER_JSON = '{"version": "1.0", "model": {"type": "BPE"}}\n'  # stands in for transformers' tokenizer.json


@pytest.fixture(scope="module")
def src(make_ckpt, tokenizer_path, tmp_path_factory):
    """A two-shard Meta checkpoint with its tokenizer.model and a Hugging Face tokenizer.json beside it."""
    out = tmp_path_factory.mktemp("src") / "llama-tiny"
    shutil.copytree(make_ckpt("mha", 2), out)
    shutil.copyfile(tokenizer_path, out / "tokenizer.model")
    (out / "tokenizer.json").write_text(TOKENIZER_JSON)
    return out


def run_tool(module, argv, monkeypatch, capsys):
    """`python -m llama.<tool> argv...` in this process -> (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [module.__name__, *map(str, argv)])
    try:
        run(module.main, module.FLAGS)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_notes_its_progress_on_stderr_and_copies_the_tokenizer(src, tmp_path, monkeypatch, capsys, tool):
    module, flags, printed, steps, written = TOOLS[tool]
    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # the tiny model's steps count as slow
    dst = tmp_path / "out"
    code, out, err = run_tool(module, [src, dst, *flags], monkeypatch, capsys)
    assert (code, out) == (0, printed.format(dst=dst))  # stdout as without progress
    assert err == "".join(f"{step} ...\n" for step in steps)
    assert listing(dst) == sorted(written + ["tokenizer.json", "tokenizer.model"])
    assert (dst / "tokenizer.json").read_text() == TOKENIZER_JSON
    assert (dst / "tokenizer.model").read_bytes() == (src / "tokenizer.model").read_bytes()


@pytest.mark.parametrize("tool", TOOLS)
@pytest.mark.parametrize("umask, folders, files", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_the_output_folder_has_the_permissions_the_umask_gives(
    src, tmp_path, monkeypatch, capsys, tool, umask, folders, files
):
    module, flags, *_ = TOOLS[tool]
    dst = tmp_path / "out"
    before = os.umask(umask)
    try:
        code, _, err = run_tool(module, [src, dst, *flags], monkeypatch, capsys)
    finally:
        os.umask(before)
    assert code == 0, err
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in [dst, *dst.rglob("*")]}
    want = {name: oct(folders if (tmp_path / name).is_dir() else files) for name in modes}
    assert modes == want
