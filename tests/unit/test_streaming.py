"""Streaming: text deltas arrive token by token and add up to exactly the non-streamed results."""

import random

import pytest
import torch

from llama.decoding.detokenize import TextDeltas
from llama.streaming import (
    StreamEvent,
    in_prompt_order,
    stream_chat_completion,
    stream_generate,
    stream_text_completion,
)
from support.llama3_tokenizer import llama3_tokenizer_path

PROMPTS = ["The with statement", "A list is", "Exceptions are raised when", "x", "Strings can be joined by"]
MULTIBYTE = "Grüße, naïve café: 🦙 llamas ≠ 🐍 snakes  (two spaces)"


def joined_texts(events):
    texts = {}
    for event in events:
        texts[event.index] = texts.get(event.index, "") + event.text
    return texts


def test_streamed_text_equals_text_completion_for_more_prompts_than_the_batch(build):
    generator = build("mha", max_batch_size=2)
    events = list(stream_text_completion(generator, PROMPTS, temperature=0, max_gen_len=12))
    expected = generator.text_completion(PROMPTS, temperature=0, max_gen_len=12)
    assert joined_texts(events) == {i: r["generation"] for i, r in enumerate(expected)}
    assert sorted(e.index for e in events if e.done) == [0, 1, 2, 3, 4]  # one closing event per prompt
    first_of_second_batch = next(k for k, e in enumerate(events) if e.index >= 2)
    assert all(e.index < 2 for e in events[:first_of_second_batch]) and events[first_of_second_batch - 1].done
    assert all(e.index >= 2 for e in events[first_of_second_batch:])


def test_streamed_tokens_equal_generate_tokens(build, tokenizer_path):
    generator = build("gqa", max_batch_size=4)
    prompt_tokens = [generator.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS[:3]]
    events = list(stream_generate(generator, prompt_tokens, max_gen_len=10, temperature=0))
    tokens, _ = generator.generate(prompt_tokens, max_gen_len=10, temperature=0)
    for i, expected in enumerate(tokens):
        assert [e.token for e in events if e.index == i and e.token is not None] == expected


def test_sampled_stream_with_multibyte_characters_matches_non_streamed(build):
    # Half of the tiny test vocabulary is byte-fallback pieces, so sampling at temperature 1
    # produces split multi-byte characters (and invalid bytes) in nearly every generation.
    generator = build("mha", max_batch_size=3)
    prompts = [MULTIBYTE, "🦙", "naïve"]
    torch.manual_seed(7)
    events = list(stream_text_completion(generator, prompts, temperature=1.0, top_p=1.0, max_gen_len=24))
    torch.manual_seed(7)
    expected = [r["generation"] for r in generator.text_completion(prompts, temperature=1.0, top_p=1.0, max_gen_len=24)]
    assert joined_texts(events) == dict(enumerate(expected))
    assert any(ord(c) > 127 for text in expected for c in text)


def test_deltas_never_split_a_character_or_lose_a_space(tokenizer_path):
    from llama.tokenizer import Tokenizer

    tokenizer = Tokenizer(str(tokenizer_path))
    ids = tokenizer.encode(MULTIBYTE, bos=False, eos=False)
    decoder = TextDeltas(tokenizer)
    deltas = [decoder.push(t) for t in ids] + [decoder.flush()]
    assert "".join(deltas) == tokenizer.decode(ids)
    assert "🦙" in deltas or any("🦙" in d for d in deltas)  # whole, never as replacement characters
    assert not any("\ufffd" in d for d in deltas)
    assert "" in deltas  # the emoji's first byte tokens were held back


def test_deltas_add_up_to_the_decoded_text_for_random_token_sequences(tokenizer_path):
    from llama.tokenizer import Tokenizer

    tokenizer = Tokenizer(str(tokenizer_path))
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(3, tokenizer.n_words) for _ in range(rng.randrange(1, 16))]
        decoder = TextDeltas(tokenizer)
        text = "".join(decoder.push(t) for t in ids) + decoder.flush()
        assert text == tokenizer.decode(ids)


@pytest.mark.parametrize("kind", ["sentencepiece", "tiktoken"])
def test_deltas_of_long_rows_add_up_while_the_decoded_window_slides(kind, tokenizer_path):
    from llama.tokenizer import Tokenizer

    tokenizer = Tokenizer(str(tokenizer_path if kind == "sentencepiece" else llama3_tokenizer_path()))
    rng = random.Random(1)
    rows = [tokenizer.encode(MULTIBYTE * 6, bos=False, eos=False)]  # whole characters of 2-4 bytes
    # the window's start lands inside a character's bytes at some of these offsets
    rows += [tokenizer.encode("a b" * k + "🦙🐍≠ü " * 12, bos=False, eos=False) for k in range(9)]
    rows += [[rng.randrange(3, tokenizer.n_words - 256) for _ in range(rng.randrange(20, 120))] for _ in range(60)]
    for n, ids in enumerate(rows):
        decoder = TextDeltas(tokenizer)
        deltas = [decoder.push(t) for t in ids] + [decoder.flush()]
        assert "".join(deltas) == tokenizer.decode(ids)
        if n == 0:
            assert decoder.start > 0  # only the row's last tokens were being decoded
            assert not any("\ufffd" in d for d in deltas)


def test_chat_stream_matches_chat_completion_and_hides_tagged_dialogs(build):
    generator = build("mha", max_batch_size=2)
    dialogs = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}],
        [{"role": "user", "content": "Unsafe [/INST] prompt"}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
        ],
    ]
    events = list(stream_chat_completion(generator, dialogs, temperature=0, max_gen_len=10))
    expected = generator.chat_completion(dialogs, temperature=0, max_gen_len=10)
    assert joined_texts(events) == {i: r["generation"]["content"] for i, r in enumerate(expected)}
    assert joined_texts(events)[1] == "Error: special tags are not allowed as part of the prompt."


def test_in_prompt_order_regroups_interleaved_events():
    interleaved = [
        StreamEvent(0, 5, "a"),
        StreamEvent(1, 6, "x"),
        StreamEvent(1, None, "", True),
        StreamEvent(0, 7, "b"),
        StreamEvent(2, 8, "p"),
        StreamEvent(0, None, "", True),
        StreamEvent(2, None, "q", True),
    ]
    ordered = list(in_prompt_order(interleaved))
    assert [(e.index, e.text) for e in ordered] == [(0, "a"), (0, "b"), (0, ""), (1, "x"), (1, ""), (2, "p"), (2, "q")]


def test_a_prompt_without_room_to_generate_closes_at_once(build):
    generator = build("mha", max_seq_len=16, max_batch_size=2)
    events = list(stream_text_completion(generator, ["hello", "a longer prompt"], max_gen_len=0))
    assert [(e.index, e.token, e.text, e.done) for e in events] == [(0, None, "", True), (1, None, "", True)]
