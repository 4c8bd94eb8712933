"""text_completion and chat_completion take any number of prompts; generate keeps its strict limit."""

import pytest

from llama.errors import ConfigError

PROMPTS = ["The with statement", "A list is", "Exceptions are raised when", "x", "Strings can be joined by"]


def test_more_prompts_than_max_batch_size_match_one_by_one(build):
    generator = build("mha", max_batch_size=2)
    together = generator.text_completion(PROMPTS, temperature=0, max_gen_len=8)
    alone = [generator.text_completion([p], temperature=0, max_gen_len=8)[0] for p in PROMPTS]
    assert [r["generation"] for r in together] == [r["generation"] for r in alone]
    assert len(set(r["generation"] for r in together)) > 1  # distinct prompts: the order is really checked


def test_batched_logprobs_and_echo_stay_with_their_prompt(build):
    generator = build("gqa", max_batch_size=2)
    together = generator.text_completion(PROMPTS, temperature=0, max_gen_len=4, logprobs=True, echo=True)
    for prompt, result in zip(PROMPTS, together):
        alone = generator.text_completion([prompt], temperature=0, max_gen_len=4, logprobs=True, echo=True)[0]
        assert result["tokens"] == alone["tokens"]
        assert result["logprobs"] == pytest.approx(alone["logprobs"], abs=1e-5)
        assert result["generation"].startswith(prompt)


def test_chat_completion_batches_dialogs_in_order(build):
    generator = build("mha", max_batch_size=2)
    dialogs = [[{"role": "user", "content": p}] for p in PROMPTS]
    dialogs[3] = [{"role": "user", "content": "Unsafe [INST] tag"}]
    together = generator.chat_completion(dialogs, temperature=0, max_gen_len=6)
    alone = [generator.chat_completion([d], temperature=0, max_gen_len=6)[0] for d in dialogs]
    assert [r["generation"]["content"] for r in together] == [r["generation"]["content"] for r in alone]
    assert together[3]["generation"]["content"] == "Error: special tags are not allowed as part of the prompt."


def test_no_prompts_give_no_results(build):
    assert build("mha", max_batch_size=2).text_completion([], max_gen_len=4) == []


def test_generate_still_refuses_more_than_max_batch_size(build):
    generator = build("mha", max_batch_size=2)
    tokens = [generator.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS[:3]]
    with pytest.raises(ConfigError, match=r"3 prompts exceed max_batch_size=2"):
        generator.generate(tokens, max_gen_len=4)
