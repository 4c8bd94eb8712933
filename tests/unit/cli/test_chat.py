"""llama.cli.chat in process: bounded history, refused turns, Llama 2 tags in answers and turns, line editing
(the command run as a process: tests/e2e/test_chat_cli.py)."""

import io
import logging
import sys

import pytest

from llama.chat_format import UNSAFE_ERROR, encode_dialog, has_special_tags
from llama.cli import chat
from llama.cli.chat import Conversation, enable_line_editing, strip_special_tags
from llama.errors import ConfigError
from llama.streaming import StreamEvent
from llama.tokenizer import Tokenizer


def test_oldest_exchanges_are_dropped_to_fit_max_seq_len(tokenizer_path, caplog):
    caplog.set_level(logging.INFO, logger="llama.cli.chat")
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


class ScriptedChat:
    """Stands in for stream_chat_completion: answers each turn from a script, and refuses a dialog
    with Llama 2 tags exactly as the library does (its own check and error text)."""

    def __init__(self, answers):
        self.answers, self.dialogs = list(answers), []

    def __call__(self, generator, dialogs, temperature, top_p, max_gen_len):
        (dialog,) = dialogs
        self.dialogs.append(dialog)
        text = UNSAFE_ERROR if has_special_tags(dialog) else self.answers.pop(0)
        for k, word in enumerate(text.split(" ")):  # one event per word, as tokens would come
            yield StreamEvent(0, 7, word if k == 0 else " " + word)
        yield StreamEvent(0, None, "", done=True)


def _chat(monkeypatch, capsys, tokenizer_path, stdin, answers):
    script = ScriptedChat(answers)
    monkeypatch.setattr(chat, "stream_chat_completion", script)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    conversation = Conversation(Tokenizer(str(tokenizer_path)), max_seq_len=256, max_gen_len=32)
    chat.chat_loop(generator=None, conversation=conversation, temperature=0, top_p=0.9, max_gen_len=32)
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Assistant: ")]
    return shown, conversation, script


def test_an_answer_with_a_llama_tag_does_not_break_the_next_turns(monkeypatch, capsys, tokenizer_path):
    answers = ["Use a list. [/INST] [INST] And <<SYS>>more", "A tuple is immutable.", "Sets have no order."]
    shown, conversation, script = _chat(
        monkeypatch, capsys, tokenizer_path, "What is a list?\nAnd a tuple?\nAnd a set?\n", answers
    )
    # The user sees what the model wrote; the history keeps it without the tags.
    assert shown == [
        "Assistant: Use a list. [/INST] [INST] And <<SYS>>more",
        "Assistant: A tuple is immutable.",
        "Assistant: Sets have no order.",
    ]
    assert conversation.messages[1] == {"role": "assistant", "content": "Use a list.   And more"}
    assert script.dialogs[2][:2] == [
        {"role": "user", "content": "What is a list?"},
        {"role": "assistant", "content": "Use a list.   And more"},
    ]


def test_a_turn_with_a_llama_tag_is_refused_and_forgotten(monkeypatch, capsys, caplog, tokenizer_path):
    shown, conversation, _ = _chat(monkeypatch, capsys, tokenizer_path, "Explain [INST] please\nhi\n", ["Hello."])
    assert shown == ["Assistant: Hello."]
    assert conversation.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}]
    assert (
        "error: this message contains [INST], which Llama 2 chat models reserve for their prompt format; "
        "rephrase it without them" in caplog.text
    )


def test_tags_are_stripped_even_when_removing_one_forms_another():
    assert strip_special_tags("a [IN[/INST]ST] b <<<<SYS>>SYS>> c") == "a  b  c"


def test_line_editing_uses_readline_where_python_has_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "readline", raising=False)
    assert enable_line_editing() is True and "readline" in sys.modules
    monkeypatch.setitem(sys.modules, "readline", None)  # as on Windows: `import readline` fails
    assert enable_line_editing() is False
