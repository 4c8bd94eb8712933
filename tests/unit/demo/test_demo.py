"""The bundled demo model: a real trained Llama that the examples run out of the box (the examples
themselves on it: tests/e2e/test_demo.py)."""

import re

import pytest

from llama import Llama, demo
from llama.testing.likelihood import nats_per_char
from support.helpers import HELDOUT

# An untrained model scores about -2.2 nats per character; the trained demo must do much better.
REQUIRED_NATS_PER_CHAR = -1.2


@pytest.fixture(scope="module")
def demo_model() -> Llama:
    return Llama.build_demo(device="cpu", dtype="float32")


def test_demo_is_a_small_meta_layout_checkpoint():
    names = {p.name for p in demo.CKPT_DIR.iterdir() if not p.name.startswith("__")}
    assert {"params.json", "consolidated.00.pth", "tokenizer.model"} <= names
    size = sum(p.stat().st_size for p in demo.CKPT_DIR.iterdir() if p.is_file())
    assert size <= 10 * 2**20


def test_demo_predicts_unseen_programming_prose(demo_model):
    paragraphs = HELDOUT.read_text().splitlines()
    assert nats_per_char(demo_model, paragraphs) >= REQUIRED_NATS_PER_CHAR


def test_heldout_text_is_not_in_the_training_topics():
    from pydoc_data.topics import topics

    corpus = " ".join(" ".join(text.split()) for text in topics.values())
    sentences = [s for line in HELDOUT.read_text().splitlines() for s in re.split(r"(?<=[.;,])\s", line)]
    assert [s for s in sentences if len(s) > 30 and s in corpus] == []


def test_demo_chat_answers_and_stops_by_itself(demo_model):
    dialog = [{"role": "user", "content": "What is the with statement?"}]
    answer = demo_model.chat_completion([dialog], temperature=0, max_gen_len=128)[0]["generation"]["content"]
    tokens = demo_model.tokenizer.encode(answer, bos=False, eos=False)
    assert 3 <= len(tokens) < 128  # it answered, and ended with eos before running out of room
