"""`python -m llama.chat`: user turns from a pipe, streamed answers, bounded history, commands."""
import logging
import subprocess
import sys

import pytest

from helpers import REPO, subprocess_env
from llama.chat import Conversation
from llama.chat_format import encode_dialog
from llama.errors import ConfigError
from llama.tokenizer import Tokenizer


def run_chat(stdin: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llama.chat", *args], input=stdin, capture_output=True, text=True,
        env=subprocess_env(), cwd=REPO, timeout=timeout,
    )


def test_piped_turns_get_streamed_answers_and_commands_work(make_ckpt, tokenizer_path):
    args = ("--ckpt_dir", str(make_ckpt("mha")), "--tokenizer_path", str(tokenizer_path),
            "--temperature", "0", "--max_seq_len", "64", "--max_gen_len", "8", "--system", "Be brief.")
    stdin = "What is a list?\n\n/reset\nAnd a tuple?\n/nonsense\n/exit\nnever read\n"
    done = run_chat(stdin, *args)
    assert done.returncode == 0, done.stderr
    answers = [line for line in done.stdout.splitlines() if line.startswith("Assistant: ")]
    assert len(answers) == 2  # the blank line, the commands and what follows /exit are not turns
    assert "(conversation reset)" in done.stderr
    assert "unknown command '/nonsense'" in done.stderr
    assert "Traceback" not in done.stderr


def test_end_of_input_exits_cleanly_and_answers_match_chat_completion(build, make_ckpt, tokenizer_path):
    args = ("--ckpt_dir", str(make_ckpt("mha")), "--tokenizer_path", str(tokenizer_path),
            "--temperature", "0", "--max_seq_len", "64", "--max_gen_len", "8")
    done = run_chat("Tell me about strings.\n", *args)  # no /exit: the pipe just ends
    assert done.returncode == 0, done.stderr
    generator = build("mha", max_seq_len=64, max_batch_size=1)
    dialog = [{"role": "user", "content": "Tell me about strings."}]
    expected = generator.chat_completion([dialog], temperature=0, max_gen_len=8)[0]["generation"]["content"]
    loaded, answer = done.stdout.split("\n", 1)
    assert loaded.startswith("Loaded in ")  # the reference's own line, kept by Llama.build
    assert answer == f"Assistant: {expected}\n"


def test_oldest_exchanges_are_dropped_to_fit_max_seq_len(tokenizer_path, caplog):
    caplog.set_level(logging.INFO, logger="llama.chat")
    tokenizer = Tokenizer(str(tokenizer_path))
    conversation = Conversation(tokenizer, max_seq_len=128, max_gen_len=16, system="Be brief.")
    for turn in range(6):
        dialog = conversation.ask(f"Question number {turn} about the with statement?")
        assert len(encode_dialog(tokenizer, dialog)) <= 128 - 16
        conversation.answer(f"Answer number {turn}.")
    assert dialog[0] == {"role": "system", "content": "Be brief."}  # the system prompt is kept
    assert dialog[-1]["content"] == "Question number 5 about the with statement?"
    assert "Question number 0" not in str(dialog)
    assert "dropped the 1 oldest exchange(s)" in caplog.text


def test_a_turn_too_long_to_fit_is_refused_and_forgotten(tokenizer_path):
    conversation = Conversation(Tokenizer(str(tokenizer_path)), max_seq_len=64, max_gen_len=16)
    with pytest.raises(ConfigError, match=r"more than the 48 that fit \(max_seq_len - max_gen_len\)"):
        conversation.ask("word " * 40)
    assert conversation.dialog() == []
    assert conversation.ask("hi") == [{"role": "user", "content": "hi"}]


def test_half_a_checkpoint_is_a_clear_error(tokenizer_path):
    done = run_chat("", "--tokenizer_path", str(tokenizer_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --tokenizer_path was given without --ckpt_dir")
