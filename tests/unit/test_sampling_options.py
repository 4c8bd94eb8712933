"""The library's opt-in sampling (top_k, repetition / frequency / presence penalties) and stop strings,
in generate, text_completion, chat_completion and the streams; the last call's timings."""

import pytest
import torch

from llama.decoding.sampler import Sampler, SamplingParams, penalize
from llama.errors import ConfigError
from llama.streaming import stream_chat_completion, stream_text_completion

PROMPTS = ["The with statement", "A list is"]


@pytest.fixture(scope="module")
def llama(build):
    return build("mha", max_seq_len=64, max_batch_size=4)


def encoded(llama, prompts=PROMPTS):
    return [llama.tokenizer.encode(p, bos=True, eos=False) for p in prompts]


def first_repeat(prompt, generated):
    """The index of the first generated token already seen (in the prompt or before it), or None."""
    seen = set(prompt)
    for k, t in enumerate(generated):
        if t in seen:
            return k
        seen.add(t)
    return None


def test_top_k_1_is_greedy_even_when_sampling(llama):
    greedy, _ = llama.generate(encoded(llama), 12, temperature=0)
    torch.manual_seed(3)
    sampled, _ = llama.generate(encoded(llama), 12, temperature=1.0, top_p=1.0, top_k=1)
    assert sampled == greedy
    torch.manual_seed(3)
    texts = llama.text_completion(PROMPTS, temperature=1.0, max_gen_len=12, top_k=1)
    assert [r["generation"] for r in texts] == [llama.tokenizer.decode(t) for t in greedy]


def test_top_k_keeps_draws_among_the_k_most_likely(llama, monkeypatch):
    from llama.decoding import loop

    seen = []
    sample_next = loop.sample_next
    monkeypatch.setattr(loop, "sample_next", lambda logits, t, p: seen.append(logits) or sample_next(logits, t, p))
    llama.generate(encoded(llama), 4, temperature=1.0, top_k=5)
    assert seen and all(int(torch.isfinite(x).sum(-1).max()) == 5 for x in seen)


def repeats(prompt, generated):
    """How many generated tokens were seen before (in the prompt or earlier in the answer)."""
    return sum(t in prompt or t in generated[:j] for j, t in enumerate(generated))


def test_repetition_penalty_stops_a_greedy_repeat(llama):
    prompts = encoded(llama)
    plain, _ = llama.generate(prompts, 16, temperature=0)
    row = next(i for i, (p, g) in enumerate(zip(prompts, plain)) if first_repeat(p, g) is not None)
    k = first_repeat(prompts[row], plain[row])
    penalized, _ = llama.generate(prompts, 16, temperature=0, repetition_penalty=5.0)
    assert penalized[row][:k] == plain[row][:k]  # the same text up to the repeat ...
    assert penalized[row][k] not in set(prompts[row]) | set(plain[row][:k])  # ... which is now a new token
    assert repeats(prompts[row], penalized[row]) < repeats(prompts[row], plain[row])


def test_frequency_and_presence_penalties_discourage_repeats(llama):
    prompts = encoded(llama)
    plain, _ = llama.generate(prompts, 16, temperature=0)
    row = next(i for i, (p, g) in enumerate(zip(prompts, plain)) if repeats([], g) > 1)
    by_count, _ = llama.generate(prompts, 16, temperature=0, frequency_penalty=2.0)
    assert repeats([], by_count[row]) < repeats([], plain[row])  # each repeat costs more than the last
    both, _ = llama.generate(prompts, 16, temperature=0, frequency_penalty=2.0, presence_penalty=2.0)
    assert repeats([], both[row]) < repeats([], by_count[row])


def test_the_batch_penalties_are_the_engine_samplers(llama):
    params = SamplingParams(0, repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.25)
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(params, prompt=[3, 7, 7])
    for t in (9, 9, 11):
        sampler.observe(t)
    ids = torch.tensor([[3, 7, 7, 9, 9, 11]])
    batch = penalize(logits[None], params, ids, ids, torch.tensor([[0, 0, 0, 1, 1, 1]]))
    assert torch.equal(batch[0], sampler._penalize(logits))


def test_stop_strings_cut_the_text_and_end_the_row(llama):
    plain = [r["generation"] for r in llama.text_completion(PROMPTS, temperature=0, max_gen_len=16)]
    tokens, _ = llama.generate(encoded(llama), 16, temperature=0)
    stop = plain[0][4:7]
    assert stop and plain[0].find(stop) >= 4
    cut = llama.text_completion(PROMPTS, temperature=0, max_gen_len=16, stop=[stop, "never there"], logprobs=True)
    assert cut[0]["generation"] == plain[0][: plain[0].find(stop)]
    assert cut[1]["generation"] == (plain[1][: plain[1].find(stop)] if stop in plain[1] else plain[1])
    assert len(cut[0]["tokens"]) < 16 and len(cut[0]["logprobs"]) == len(cut[0]["tokens"])
    # its tokens end with the one that completed the stop string
    assert len(cut[0]["tokens"]) == next(n for n in range(17) if stop in llama.tokenizer.decode(tokens[0][:n]))
    assert llama.last_timings.generated_tokens == sum(len(r["tokens"]) for r in cut)


def test_stop_strings_are_never_streamed(llama):
    plain = [r["generation"] for r in llama.text_completion(PROMPTS, temperature=0, max_gen_len=16)]
    stop = plain[0][4:7]
    events = list(stream_text_completion(llama, PROMPTS, temperature=0, max_gen_len=16, stop=stop))
    expected = [r["generation"] for r in llama.text_completion(PROMPTS, temperature=0, max_gen_len=16, stop=stop)]
    assert ["".join(e.text for e in events if e.index == i) for i in range(2)] == expected
    assert not any(stop in e.text for e in events)
    assert sum(e.done for e in events) == 2


def test_chat_stop_strings_in_the_answer_and_the_stream(llama):
    dialogs = [[{"role": "user", "content": "What is a list?"}]]
    plain = llama.chat_completion(dialogs, temperature=0, max_gen_len=16)[0]["generation"]["content"]
    stop = plain[3:6]
    answer = llama.chat_completion(dialogs, temperature=0, max_gen_len=16, stop=stop)[0]["generation"]["content"]
    assert answer == plain[: plain.find(stop)]
    streamed = "".join(e.text for e in stream_chat_completion(llama, dialogs, temperature=0, max_gen_len=16, stop=stop))
    assert streamed == answer


def test_streamed_logprobs_equal_text_completions(llama):
    expected = llama.text_completion(PROMPTS, temperature=0, max_gen_len=10, logprobs=True)
    events = list(stream_text_completion(llama, PROMPTS, temperature=0, max_gen_len=10, logprobs=True))
    for i, r in enumerate(expected):
        assert [e.logprob for e in events if e.index == i and e.token is not None] == r["logprobs"]
    assert all(e.logprob is None for e in stream_text_completion(llama, PROMPTS, temperature=0, max_gen_len=3))


def test_streamed_and_returned_runs_count_the_same_tokens(llama):
    llama.text_completion(PROMPTS, temperature=0, max_gen_len=12)
    returned = llama.last_timings
    events = list(stream_text_completion(llama, PROMPTS, temperature=0, max_gen_len=12))
    streamed = llama.last_timings
    assert returned.generated_tokens == streamed.generated_tokens == sum(e.token is not None for e in events)
    assert returned.prompt_tokens == streamed.prompt_tokens == sum(len(t) for t in encoded(llama))
    assert returned.prompt_s > 0 and returned.generation_s > 0 and returned.generation_rate > 0


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"top_k": -1}, "top_k must be an integer >= 0, got -1; 0 turns it off"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0, got 2.5; 0 turns it off"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a number > 0 (1 = off), got 0"),
        ({"frequency_penalty": 3}, "frequency_penalty must be a number in [-2, 2] (0 = off), got 3"),
        ({"presence_penalty": float("nan")}, "presence_penalty must be a number in [-2, 2] (0 = off), got nan"),
        ({"stop": [""]}, "stop must be a non-empty string or a list of them, got ['']; e.g. stop=['\\n\\n']"),
        ({"stop": 5}, "stop must be a non-empty string or a list of them, got 5; e.g. stop=['\\n\\n']"),
        ({"stop": "x", "echo": True}, "stop strings cut the generated text, but echo=True returns the prompt too"),
    ],
)
def test_bad_options_are_refused_by_name(llama, kw, message):
    with pytest.raises(ConfigError) as err:
        llama.text_completion(PROMPTS, max_gen_len=2, **kw)
    assert str(err.value).startswith(message)


def test_generate_refuses_bad_options_too(llama):
    with pytest.raises(ConfigError, match="top_k must be an integer >= 0, got -2"):
        llama.generate(encoded(llama), 2, top_k=-2)
    with pytest.raises(ConfigError, match=r"repetition_penalty must be a number > 0 \(1 = off\), got -1"):
        list(stream_text_completion(llama, PROMPTS, max_gen_len=2, repetition_penalty=-1))
