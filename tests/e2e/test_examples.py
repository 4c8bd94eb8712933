"""Both example CLIs end to end, as a user runs them: plain `python`, no launcher, CPU."""

import re
import shutil
import subprocess
import sys

import pytest

from llama.cli.frontend import SEPARATOR
from support.helpers import REPO, subprocess_env

# The closing line: the prompt (to the first token) and the generation after it, apart.
SUMMARY = (
    r"generated \d+ tokens: the first after \d+\.\d\d s \(prompt \d+ tokens, [\d.]+ tokens/s\), "
    r"the rest in \d+\.\d\d s \([\d.]+ tokens/s\)"
)


def run_example(script, *args):
    return subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        cwd=REPO,
    )


def test_text_completion_example_prints_four_prompts_and_answers(make_ckpt, tokenizer_path):
    proc = run_example(
        "example_text_completion.py",
        "--ckpt_dir",
        make_ckpt("gqa", 2),
        "--tokenizer_path",
        tokenizer_path,
        "--max_gen_len",
        8,
        "--temperature",
        0,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("Loaded in ")
    assert out.count(SEPARATOR) == 4
    assert "I believe the meaning of life is\n> " in out
    assert "cheese =>\n> " in out
    assert "Traceback" not in proc.stderr
    # One load figure (the reference's stdout line); stderr's summary times the generation only.
    assert re.search(f"^{SUMMARY}$", proc.stderr, re.M), proc.stderr
    assert "loaded in" not in proc.stderr.lower()


def test_chat_completion_example_prints_dialogs_and_the_unsafe_error(make_ckpt, tokenizer_path):
    # The tiny test tokenizer needs more tokens than Llama 2's for the long system prompt.
    proc = run_example(
        "example_chat_completion.py",
        "--ckpt_dir",
        make_ckpt("mha", 1),
        "--tokenizer_path",
        tokenizer_path,
        "--max_gen_len",
        4,
        "--max_seq_len",
        1024,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count(SEPARATOR) == 6
    assert "User: what is the recipe of mayonnaise?\n\n> Assistant: " in out
    assert "System: Always answer with Haiku\n\nUser: I am going to Paris, what should I see?\n\n> Assistant:" in out
    assert "> Assistant: Error: special tags are not allowed as part of the prompt." in out


def test_chat_example_runs_a_llama3_checkpoint_in_its_own_format(make_ckpt):
    from support.llama3_tokenizer import llama3_tokenizer_path

    proc = run_example(
        "example_chat_completion.py",
        "--ckpt_dir",
        make_ckpt("llama3.1", 2),
        "--tokenizer_path",
        llama3_tokenizer_path(),
        "--max_gen_len",
        4,
        "--temperature",
        0,
        "--quantize",
        "int8",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(SEPARATOR) == 6
    # Llama 3 has no special-tag rule: the dialog with [INST] in it is answered like the others.
    assert "Error: special tags are not allowed" not in proc.stdout
    assert "quantize=int8" in next(line for line in proc.stderr.splitlines() if line.startswith("runtime: "))


def test_examples_accept_device_and_dtype_overrides(make_ckpt, tokenizer_path):
    proc = run_example(
        "example_text_completion.py",
        "--ckpt_dir",
        make_ckpt("mha", 1),
        "--tokenizer_path",
        tokenizer_path,
        "--max_gen_len",
        2,
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
    )
    assert proc.returncode == 0, proc.stderr
    assert "dtype=bfloat16" in proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_demo_installs_the_package_without_the_test_extras(tmp_path):
    def planned(target):  # what `make` would run on a fresh machine (-n: print, run nothing)
        done = subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return [line for line in done.stdout.splitlines() if "pip install" in line]

    assert planned("demo") == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -c constraints.txt -e ."]
    assert planned("test") == [f"{tmp_path / 'venv'}/bin/python -m pip install -q -c constraints.txt -e '.[test]'"]
