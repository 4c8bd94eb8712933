"""llama.cli.chat in process: bounded history, refused turns, Llama 2 tags in answers and turns, line editing
(the command run as a process: tests/e2e/test_chat_cli.py)."""

import io
import logging
import sys

import pytest

from llama.chat_format import encode_dialog
from llama.cli import chat
from llama.cli.chat import Conversation, enable_line_editing, stop_strings, strip_special_tags
from llama.cli.chat_turn import Answer, Responder, rates_line
from llama.decoding.engine import Engine
from llama.decoding.requests import Completion, TokenEvent
from llama.decoding.sampler import SamplingParams
from llama.errors import ConfigError
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


class ScriptedHandle:
    """A request's handle that yields a scripted answer, one event per word (as tokens would come);
    `interrupt_after` words in, the caller's Ctrl-C (KeyboardInterrupt) arrives."""

    def __init__(self, text, interrupt_after=None):
        self.words = text.split(" ")
        self.interrupt_after, self.cancelled = interrupt_after, False

    def __iter__(self):
        for k, word in enumerate(self.words):
            if k == self.interrupt_after:
                raise KeyboardInterrupt
            yield TokenEvent(7, word if k == 0 else " " + word)

    def cancel(self):
        self.cancelled = True

    def result(self, timeout=None):
        reason = "cancelled" if self.cancelled else "stop"
        return Completion(tokens=[7] * len(self.words), finish_reason=reason, prompt_tokens=10, cached_tokens=4)


class ScriptedEngine:
    """Stands in for the engine: answers each request from a script and keeps the prompts it got."""

    def __init__(self, answers, interrupt=None):
        self.answers, self.prompts, self.handles = list(answers), [], []
        self.interrupt = interrupt or {}  # turn -> words before the Ctrl-C

    def submit(self, request):
        self.prompts.append(list(request.prompt_tokens))
        handle = ScriptedHandle(self.answers.pop(0), self.interrupt.get(len(self.prompts) - 1))
        self.handles.append(handle)
        return handle


def _chat(monkeypatch, capsys, tokenizer_path, stdin, answers, interrupt=None):
    engine = ScriptedEngine(answers, interrupt)
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    tokenizer = Tokenizer(str(tokenizer_path))
    conversation = Conversation(tokenizer, max_seq_len=256, max_gen_len=32)
    respond = Responder(engine, tokenizer, SamplingParams(temperature=0), max_gen_len=32)
    chat.chat_loop(respond, conversation)
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Assistant: ")]
    return shown, conversation, engine


def test_an_answer_with_a_llama_tag_does_not_break_the_next_turns(monkeypatch, capsys, tokenizer_path):
    answers = ["Use a list. [/INST] [INST] And <<SYS>>more", "A tuple is immutable.", "Sets have no order."]
    shown, conversation, engine = _chat(
        monkeypatch, capsys, tokenizer_path, "What is a list?\nAnd a tuple?\nAnd a set?\n", answers
    )
    # The user sees what the model wrote; the history keeps it without the tags.
    assert shown == [
        "Assistant: Use a list. [/INST] [INST] And <<SYS>>more",
        "Assistant: A tuple is immutable.",
        "Assistant: Sets have no order.",
    ]
    assert conversation.messages[1] == {"role": "assistant", "content": "Use a list.   And more"}
    tokenizer = Tokenizer(str(tokenizer_path))
    assert engine.prompts[2] == encode_dialog(
        tokenizer,
        [
            {"role": "user", "content": "What is a list?"},
            {"role": "assistant", "content": "Use a list.   And more"},
            {"role": "user", "content": "And a tuple?"},
            {"role": "assistant", "content": "A tuple is immutable."},
            {"role": "user", "content": "And a set?"},
        ],
    )


def test_a_turn_with_a_llama_tag_is_refused_and_forgotten(monkeypatch, capsys, caplog, tokenizer_path):
    shown, conversation, engine = _chat(monkeypatch, capsys, tokenizer_path, "Explain [INST] please\nhi\n", ["Hello."])
    assert len(engine.prompts) == 1  # the refused turn never reached the model
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


def test_ctrl_c_cuts_the_answer_keeps_what_was_shown_and_the_chat_goes_on(monkeypatch, capsys, caplog, tokenizer_path):
    caplog.set_level(logging.INFO, logger="llama.cli.chat_turn")
    answers = ["One two three four five.", "Fine."]
    shown, conversation, engine = _chat(
        monkeypatch, capsys, tokenizer_path, "Count please\nAnd now?\n", answers, interrupt={0: 2}
    )
    assert shown == ["Assistant: One two", "Assistant: Fine."]
    assert engine.handles[0].cancelled and not engine.handles[1].cancelled
    assert conversation.messages[1] == {"role": "assistant", "content": "One two"}
    assert "(answer cut short by Ctrl-C; Ctrl-C at the prompt, /exit or Ctrl-D quits)" in caplog.text


def test_piped_turns_are_echoed_so_the_transcript_shows_both_sides(monkeypatch, capsys, tokenizer_path):
    engine = ScriptedEngine(["Hello."])
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi there\n"))
    tokenizer = Tokenizer(str(tokenizer_path))
    respond = Responder(engine, tokenizer, SamplingParams(temperature=0), max_gen_len=8)
    chat.chat_loop(respond, Conversation(tokenizer, max_seq_len=64, max_gen_len=8))
    assert capsys.readouterr().out == "User: hi there\nAssistant: Hello.\n"


def test_each_turn_draws_from_its_own_seed(tokenizer_path):
    tokenizer = Tokenizer(str(tokenizer_path))
    respond = Responder(None, tokenizer, SamplingParams(temperature=0.7, top_k=5, seed=11), max_gen_len=8)
    first = respond.request([{"role": "user", "content": "hi"}])
    respond.turns += 1
    second = respond.request([{"role": "user", "content": "hi"}])
    assert (first.sampling.seed, second.sampling.seed) == (11, 12)
    assert second.sampling.top_k == 5 and second.sampling.temperature == 0.7


def test_verbose_line_gives_prompt_and_generation_apart():
    completion = Completion(tokens=list(range(11)), prompt_tokens=400, cached_tokens=380)
    line = rates_line(Answer("x", False, completion, first_token_s=0.05, total_s=1.05))
    assert line == (
        "(prompt 400 tokens (380 from the cache, 20 computed), first token after 0.050 s (400.0 tokens/s); "
        "answer 11 tokens, 10.0 tokens/s after the first)"
    )


def test_stop_takes_a_text_or_a_list_of_them():
    assert stop_strings(None) == [] and stop_strings("User:") == ["User:"] and stop_strings(["a", "b"]) == ["a", "b"]
    with pytest.raises(ConfigError, match=r"--stop takes a non-empty text or a list of them, got \[''\]"):
        stop_strings([""])


@pytest.mark.parametrize("name", ["mha", "llama3.1"])
def test_turns_on_the_engine_compute_only_new_tokens_and_match_chat_completion(build, capsys, name):
    reference = build(name, max_seq_len=160, max_batch_size=1)  # its own caches: the engine's stay untouched
    generator = build(name, max_seq_len=160, max_batch_size=1)
    engine = Engine(generator)
    try:
        respond = Responder(engine, generator.tokenizer, SamplingParams(temperature=0), max_gen_len=8)
        conversation = Conversation(generator.tokenizer, max_seq_len=160, max_gen_len=8, system="Be brief.")
        previous_prompt = 0
        for turn, text in enumerate(["What is a list?", "And a tuple?", "And a set?"]):
            dialog = conversation.ask(text)
            answer = respond(dialog)
            expected = reference.chat_completion([dialog], temperature=0, max_gen_len=8)[0]["generation"]["content"]
            assert answer.text == expected
            done = answer.completion
            assert done.prompt_tokens == len(encode_dialog(generator.tokenizer, dialog))
            if turn:  # everything up to the last answer came from the cache, bar what re-encoding changed
                assert previous_prompt <= done.cached_tokens < done.prompt_tokens
            previous_prompt = done.prompt_tokens
            conversation.answer(answer.text)
    finally:
        engine.close(drain=False)
