"""`python -m llama.convert` run as a process: its one error line, --force, its --help, and what it imports."""

import os
import subprocess
import sys

import pytest

from llama.cli.convert import convert
from llama.errors import ConfigError
from support.helpers import REPO, assert_nothing_written

pytestmark = pytest.mark.usefixtures("one_thread")


def run_convert(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "llama.convert", *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env
    )


def test_cli_refuses_a_directory_of_neither_layout_with_one_error_line(tmp_path):
    (tmp_path / "src").mkdir()
    result = run_convert(tmp_path / "src", tmp_path / "dst")
    assert result.returncode == 1
    assert result.stderr == (
        f"error: checkpoint directory '{tmp_path / 'src'}' holds neither layout: expected a Hugging Face "
        "directory (config.json + model.safetensors or model.safetensors.index.json) or a Meta one "
        "(params.json + consolidated.*.pth)\n"
    )
    assert_nothing_written(tmp_path / "dst")


def test_existing_dst_is_replaced_only_with_force(make_ckpt, tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError) as err:
        convert(make_ckpt("mha"), dst)
    assert str(err.value) == f"DST '{dst}' already exists; pass --force to replace it, or choose a new directory"
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    result = run_convert(make_ckpt("mha"), dst, "--force")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote Hugging Face checkpoint to {dst}\n"
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors", "original"]
    assert [p.name for p in tmp_path.iterdir()] == ["dst"]


def test_convert_help_describes_every_flag_and_the_tool_never_imports_the_generator():
    result = run_convert("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m llama.convert SRC DST")
    assert (
        "  --to LAYOUT            the layout to write (choices: meta, hf; default: the other one than SRC's)"
        in result.stdout
    )
    code = "import sys, llama.cli.convert; print(sorted(m for m in sys.modules if m.startswith('llama.')))"
    imported = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    ).stdout
    assert "llama.cli.convert" in imported and "llama.generation" not in imported and "llama.decoding" not in imported
