"""A frozen end-to-end check: the bundled demo model's greedy text, character for character.

Any change to the math, the loading, the tokenizer or the decode loop that moves one token shows
here. Regenerate EXPECTED only on purpose (a retrained demo model, a deliberate numeric change),
and say why in the commit: `python -c "from tests.unit.demo.test_frozen_demo import regenerate; regenerate()"`.
Recorded 2026-11-28 with the demo model of llama/demo/TRAINING.md, CPU float32, one thread.
"""

import pytest
import torch

from llama import Llama

MAX_GEN_LEN = 40
EXPECTED = [
    (
        "A list comprehension",
        "s from a list of tuples.\n\n* If the value is not given, the expression list is a tuple, the expression list is a tuple of the expressions.\n\n* If",
    ),
    (
        "The function returns",
        "a new value for the resulting object.\n\nThe function is called with the return value of the function object.\n\nThe return value is the value of the object.\n\nThe return",
    ),
    (
        "To open a file in Python,",
        "and the file system paths in the archive.\n\nThe file is a file object that will be a file object.  The file is a file object, the file object is a file object",
    ),
]


def greedy_texts():
    generator = Llama.build_demo(device="cpu", dtype="float32", max_batch_size=len(EXPECTED))
    prompts = [p for p, _ in EXPECTED]
    return [r["generation"] for r in generator.text_completion(prompts, temperature=0, max_gen_len=MAX_GEN_LEN)]


@pytest.mark.usefixtures("one_thread")
def test_the_demo_models_greedy_text_is_unchanged():
    assert greedy_texts() == [text for _, text in EXPECTED]


def regenerate() -> None:
    torch.set_num_threads(1)
    for (prompt, _), text in zip(EXPECTED, greedy_texts()):
        print(f"    ({prompt!r},\n     {text!r}),")
