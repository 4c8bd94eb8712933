"""`python -m llama.chat` run as a user runs it: user turns from a pipe, streamed answers, commands,
a clear error for half a checkpoint, and a Llama 3 checkpoint."""

import subprocess
import sys

from support.helpers import REPO, subprocess_env
from support.llama3_tokenizer import llama3_tokenizer_path


def run_chat(stdin: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama.chat", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=timeout,
    )


def test_piped_turns_get_streamed_answers_and_commands_work(make_ckpt, tokenizer_path):
    args = (
        "--ckpt_dir",
        str(make_ckpt("mha")),
        "--tokenizer_path",
        str(tokenizer_path),
        "--temperature",
        "0",
        "--max_seq_len",
        "64",
        "--max_gen_len",
        "8",
        "--system",
        "Be brief.",
    )
    stdin = "What is a list?\n\n/reset\nAnd a tuple?\n/nonsense\n/exit\nnever read\n"
    done = run_chat(stdin, *args)
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("Assistant: ")]
    assert len(answers) == 2  # the blank line, the commands and what follows /exit are not turns
    assert "(conversation reset)" in done.stderr
    assert "unknown command '/nonsense'" in done.stderr
    assert "Traceback" not in done.stderr


def test_end_of_input_exits_cleanly_and_answers_match_chat_completion(build, make_ckpt, tokenizer_path):
    args = (
        "--ckpt_dir",
        str(make_ckpt("mha")),
        "--tokenizer_path",
        str(tokenizer_path),
        "--temperature",
        "0",
        "--max_seq_len",
        "64",
        "--max_gen_len",
        "8",
    )
    done = run_chat("Tell me about strings.\n", *args)  # no /exit: the pipe just ends
    assert done.returncode == 0, done.stderr
    generator = build("mha", max_seq_len=64, max_batch_size=1)
    dialog = [{"role": "user", "content": "Tell me about strings."}]
    expected = generator.chat_completion([dialog], temperature=0, max_gen_len=8)[0]["generation"]["content"]
    loaded, answer = done.stdout.split("\n", 1)
    assert loaded.startswith("Loaded in ")  # the reference's own line, kept by Llama.build
    assert answer == f"User: Tell me about strings.\nAssistant: {expected}\n"  # piped turns are echoed


def test_half_a_checkpoint_is_a_clear_error(tokenizer_path):
    done = run_chat("", "--tokenizer_path", str(tokenizer_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --tokenizer_path was given without --ckpt_dir")


def test_the_interactive_chat_talks_with_a_llama3_checkpoint(make_ckpt):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llama.chat",
            "--ckpt_dir",
            str(make_ckpt("llama3.1", 2)),
            "--tokenizer_path",
            str(llama3_tokenizer_path()),
            "--max_seq_len",
            "128",
            "--max_gen_len",
            "8",
            "--temperature",
            "0",
        ],
        input="Hello there\nHow are you?\n/exit\n",
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("Assistant: ") == 2 and "error:" not in done.stderr
