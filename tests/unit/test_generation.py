"""generate / text_completion against the semantics of Meta's `meta-llama/llama` `llama/generation.py` (generate)."""

from types import SimpleNamespace

import pytest
import torch

from llama import Llama
from llama.decoding.native_step import NativeDecode
from llama.generation import sample_top_p
from llama.kv_cache import BlockPool
from llama.testing.reference import RefModel, ref_generate
from llama.testing.synthetic import tiny_args as model_args

PROMPTS = ["The quick brown fox", "Python is a programming language that", "A"]


def encode_all(llama, prompts=PROMPTS):
    return [llama.tokenizer.encode(p, bos=True, eos=False) for p in prompts]


def reference(full_state, llama, config, prompts, **kw):
    p = llama.model.params
    ref = RefModel(full_state(config), model_args(config), p.max_batch_size, p.max_seq_len)
    return ref_generate(
        ref, prompts, max_seq_len=p.max_seq_len, pad_id=llama.tokenizer.pad_id, eos_id=llama.tokenizer.eos_id, **kw
    )


@pytest.mark.parametrize("config,n_shards", [("mha", 1), ("mha", 2), ("gqa", 1), ("gqa", 2)])
def test_greedy_tokens_and_logprobs_equal_the_reference(build, full_state, config, n_shards):
    llama = build(config, n_shards)
    assert isinstance(llama.decode_step, NativeDecode)  # the one-token steps run natively (another summation order)
    prompts = encode_all(llama)
    tokens, logprobs = llama.generate(prompts, max_gen_len=12, temperature=0, logprobs=True)
    ref_tokens, ref_logprobs = reference(full_state, llama, config, prompts, max_gen_len=12, logprobs=True)
    # ... and so does llama.model's eager step, the reference's arithmetic operation for operation
    assert Llama(llama.model, llama.tokenizer).generate(prompts, max_gen_len=12, temperature=0)[0] == ref_tokens
    assert tokens == ref_tokens
    assert all(len(t) == 12 for t in tokens)
    for ours, theirs in zip(logprobs, ref_logprobs):
        torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs), rtol=0, atol=1e-4)


def test_top_p_sampling_draws_the_reference_tokens_with_the_same_seed(build, full_state):
    llama = build("gqa")
    prompts = encode_all(llama)
    torch.manual_seed(1234)
    tokens, _ = llama.generate(prompts, max_gen_len=16, temperature=0.8, top_p=0.9)
    torch.manual_seed(1234)
    ref_tokens, _ = reference(full_state, llama, "gqa", prompts, max_gen_len=16, temperature=0.8, top_p=0.9)
    assert tokens == ref_tokens


def test_build_seeds_torch_so_sampling_repeats(build):
    runs = [build("mha", seed=7).text_completion(["Once upon a time"], max_gen_len=10) for _ in range(2)]
    assert runs[0] == runs[1]
    other = build("mha", seed=8).text_completion(["Once upon a time"], max_gen_len=10)
    assert other != runs[0]


@pytest.mark.parametrize("config", ["mha", "gqa"])
def test_one_and_two_shards_generate_the_same_text(build, config):
    texts = [build(config, n).text_completion(PROMPTS, temperature=0, max_gen_len=10) for n in (1, 2)]
    assert texts[0] == texts[1]


# --- sample_top_p ------------------------------------------------------------------------------


def recording_multinomial(monkeypatch, pick):
    seen = []

    def fake(probs, num_samples):
        seen.append(probs.clone())
        return torch.full((probs.shape[0], num_samples), pick, dtype=torch.long)

    monkeypatch.setattr(torch, "multinomial", fake)
    return seen


def test_top_p_drops_tokens_whose_preceding_mass_exceeds_p_and_renormalises(monkeypatch):
    seen = recording_multinomial(monkeypatch, pick=1)
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    token = sample_top_p(probs, 0.7)
    # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 0), 0.05 (id 2); mass before: 0, .5, .8, .95
    torch.testing.assert_close(seen[0], torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    assert token.tolist() == [[3]]  # draw index 1 in sorted order maps back to vocabulary id 3


def test_top_p_keeps_a_token_whose_preceding_mass_equals_p(monkeypatch):
    seen = recording_multinomial(monkeypatch, pick=0)
    sample_top_p(torch.tensor([[0.5, 0.25, 0.25]]), 0.5)
    torch.testing.assert_close(seen[0], torch.tensor([[2 / 3, 1 / 3, 0.0]]))


def test_top_p_of_one_keeps_every_token(monkeypatch):
    seen = recording_multinomial(monkeypatch, pick=0)
    sample_top_p(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), 1.0)
    torch.testing.assert_close(seen[0], torch.tensor([[0.4, 0.3, 0.2, 0.1]]))


def test_top_p_draws_are_deterministic_per_seed():
    probs = torch.softmax(torch.randn(4, 50, generator=torch.Generator().manual_seed(0)), dim=-1)
    draws = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        draws.append(torch.cat([sample_top_p(probs, 0.9) for _ in range(20)], dim=1))
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


# --- the decode loop, driven by a scripted model -------------------------------------------------


class ScriptedModel(torch.nn.Module):
    """Predicts script[row][pos + 1] after the token at position pos; counts forward calls."""

    def __init__(self, script, vocab=16, max_seq_len=32, max_batch_size=4):
        super().__init__()
        self.script = script
        self.vocab = vocab
        self.params = SimpleNamespace(max_seq_len=max_seq_len, max_batch_size=max_batch_size)
        self.tok_embeddings = SimpleNamespace(weight=torch.zeros(1))
        self.kv_pool = BlockPool(max_batch_size, max_seq_len, max_batch_size * max_seq_len, token_bytes=0)
        self.calls = []

    def forward(self, tokens, start_pos, last_only=False):
        self.calls.append((start_pos, tokens.shape[1]))
        bsz, seqlen = tokens.shape
        logits = torch.zeros(bsz, seqlen, self.vocab)
        for b in range(bsz):
            for i in range(seqlen):
                nxt = self.script[b][min(start_pos + i + 1, len(self.script[b]) - 1)]
                logits[b, i, nxt] = 10.0
        return logits[:, -1:] if last_only else logits


class FakeTokenizer:
    pad_id, eos_id, bos_id, n_words = -1, 2, 1, 16
    stop_tokens = [2]

    def decode(self, t):
        return " ".join(map(str, t))


def scripted(script, **kw):
    return Llama(ScriptedModel(script, **kw), FakeTokenizer())


def test_prompt_tokens_are_never_overwritten():
    # Row 1's prompt is longer; the model "wants" to write 9s over it while row 0 generates.
    llama = scripted([[1, 5, 6, 7, 8, 9, 9, 9], [1, 9, 9, 9, 9, 9, 9, 9]])
    tokens, _ = llama.generate([[1, 5], [1, 3, 4, 5, 6]], max_gen_len=3, temperature=0, echo=True)
    assert tokens[0] == [1, 5, 6, 7, 8]
    assert tokens[1] == [1, 3, 4, 5, 6, 9, 9, 9]


def test_decoding_starts_at_the_shortest_prompt_and_feeds_only_new_tokens():
    llama = scripted([[1, 5, 6, 7, 8, 9, 10, 11]] * 2)
    llama.generate([[1, 5], [1, 3, 4, 5]], max_gen_len=2, temperature=0)
    assert llama.model.calls == [(0, 2), (2, 1), (3, 1), (4, 1)]


def test_rows_finish_at_their_own_eos_and_the_loop_stops_when_all_have():
    llama = scripted([[1, 5, 6, 2, 7, 7, 7, 7, 7], [1, 5, 6, 7, 8, 2, 7, 7, 7]])
    tokens, _ = llama.generate([[1, 5], [1, 5]], max_gen_len=10, temperature=0)
    assert tokens == [[6], [6, 7, 8]]
    assert len(llama.model.calls) == 4  # stopped after row 1's eos at position 5, not at total_len


def test_eos_inside_a_prompt_does_not_finish_the_row():
    llama = scripted([[1, 2, 5, 6, 7, 8], [1, 5, 6, 7, 8, 8]])
    tokens, _ = llama.generate([[1, 2, 5], [1, 5]], max_gen_len=2, temperature=0, echo=True)
    assert tokens[0] == [1]  # the output is still cut at the first eos, as in the reference
    assert len(llama.model.calls) == 3  # ...but generation went on to total_len


def test_generation_is_limited_by_max_gen_len_and_max_seq_len():
    llama = scripted([[1] + list(range(3, 16))], max_seq_len=6)
    tokens, _ = llama.generate([[1, 3]], max_gen_len=10, temperature=0)
    assert tokens == [[4, 5, 6, 7]]  # total_len = min(6, 10 + 2)


# --- logprobs and echo on the real model ---------------------------------------------------------


def test_echo_returns_the_prompt_with_its_logprobs(build):
    llama = build("mha")
    prompt = encode_all(llama, ["Hello world, this is"])
    tokens, logprobs = llama.generate(prompt, max_gen_len=4, temperature=0, logprobs=True, echo=True)
    assert tokens[0][: len(prompt[0])] == prompt[0]
    assert len(tokens[0]) == len(logprobs[0]) == len(prompt[0]) + 4
    assert logprobs[0][0] == 0.0  # nothing scores the first token
    assert all(lp < 0 for lp in logprobs[0][1:])


def test_logprobs_score_each_token_against_the_previous_position_when_prompts_fill_everything(build):
    # Fixes the reference bug: with max_gen_len=0 every prompt fills total_len.
    llama = build("gqa")
    prompts = encode_all(llama, ["Hello world, this is", "Tests assert behaviour"])
    _, full = llama.generate(prompts, max_gen_len=0, temperature=0, logprobs=True, echo=True)
    _, stepwise = llama.generate(prompts, max_gen_len=1, temperature=0, logprobs=True, echo=True)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(torch.tensor(full[i]), torch.tensor(stepwise[i][: len(p)]), rtol=0, atol=1e-5)


def test_text_completion_returns_the_reference_dict_shapes(build):
    llama = build("mha")
    plain = llama.text_completion(["Hello"], temperature=0, max_gen_len=5)
    assert list(plain[0]) == ["generation"] and isinstance(plain[0]["generation"], str)
    rich = llama.text_completion(["Hello"], temperature=0, max_gen_len=5, logprobs=True)
    assert list(rich[0]) == ["generation", "tokens", "logprobs"]
    tokens, _ = llama.generate([llama.tokenizer.encode("Hello", bos=True, eos=False)], 5, 0)
    assert rich[0]["tokens"] == [llama.tokenizer.decode(t) for t in tokens[0]]
    assert len(rich[0]["logprobs"]) == len(tokens[0])
    assert rich[0]["generation"] == plain[0]["generation"]


def test_text_completion_defaults_max_gen_len_to_max_seq_len_minus_one(build, monkeypatch):
    llama = build("mha", max_seq_len=32)
    asked = []
    generate = llama.generate
    monkeypatch.setattr(llama, "generate", lambda *a, **kw: asked.append(a[1]) or generate(*a, **kw))
    llama.text_completion(["Hi"], temperature=0)
    llama.chat_completion([[{"role": "user", "content": "Hi"}]], temperature=0)
    assert asked == [31, 31]  # the reference's max_seq_len - 1, for both completions
    assert llama.encode_prompts(["Hi"], None)[1] == 31 and llama.encode_prompts(["Hi"], 3)[1] == 3


def test_the_runtime_line_names_the_decode_path(build, caplog, monkeypatch):
    from llama.decoding import native_step

    caplog.set_level("INFO", logger="llama.generation")
    llama = build("mha")
    expected = "native" if native_step.why_not(llama.model) is None else "eager"
    line = [m for m in caplog.messages if m.startswith("runtime: ")][-1]
    assert line.startswith("runtime: backend=gloo device=cpu dtype=float32 ") and line.endswith(f") decode={expected}")
    monkeypatch.setattr(native_step, "for_model", lambda model: None)
    caplog.clear()
    build("mha", compile=True)
    assert [m for m in caplog.messages if m.startswith("runtime: ")][-1].endswith(" decode=compiled")
    caplog.clear()
    build("mha")
    assert [m for m in caplog.messages if m.startswith("runtime: ")][-1].endswith(" decode=eager")
