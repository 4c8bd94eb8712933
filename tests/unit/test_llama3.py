"""Llama 3, 3.1 and 3.2 checkpoints in Meta's format, through the same API as Llama 2.

Oracles: Meta's own Llama 3 transformer (`llama_models.llama3.model`, from the llama-models wheel,
run here on the CPU) for the math, the reference decode loop restated in llama.testing.reference (with
Llama 3's stop tokens) for generate, and Hugging Face transformers' LlamaForCausalLM (rope_scaling
type llama3) for external parity.
"""

import pytest
import torch

from llama.streaming import stream_text_completion
from llama.testing.reference import ref_generate
from llama.testing.synthetic import tiny_args as model_args
from support.hf_reference import to_hf
from support.meta_llama3 import metas_transformer

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Ünïcödé and 🙂 emoji"]
CONFIGS = ["llama3", "llama3.1"]


@pytest.mark.parametrize("config", CONFIGS)
def test_logits_equal_metas_llama3_transformer(build, full_state, config):
    llama = build(config, max_seq_len=32, max_batch_size=2)  # also sets up fairscale's groups
    meta = metas_transformer(full_state(config), model_args(config), 32, 2)
    tokens = torch.tensor([llama.tokenizer.encode(p, bos=True, eos=False)[:5] for p in PROMPTS[:2]])
    # float32 sums in another order than Meta's (the native kernels on x86): ~1e-6 of logits up to ~8
    torch.testing.assert_close(llama.model.forward(tokens, 0), meta.forward(tokens, 0), rtol=0, atol=3e-5)
    step = torch.tensor([[791], [13]])
    torch.testing.assert_close(llama.model.forward(step, 5), meta.forward(step, 5), rtol=0, atol=3e-5)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("temperature", [0.0, pytest.param(0.8, marks=pytest.mark.slow)])
def test_generate_equals_the_reference_loop_on_metas_model(build, full_state, config, temperature):
    llama = build(config, max_seq_len=48, max_batch_size=3)
    meta = metas_transformer(full_state(config), model_args(config), 48, 3)
    prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    torch.manual_seed(7)
    ours = llama.generate(prompts, 24, temperature=temperature, top_p=0.9, logprobs=True)
    torch.manual_seed(7)
    ref = ref_generate(
        meta,
        prompts,
        24,
        48,
        llama.tokenizer.pad_id,
        llama.tokenizer.stop_tokens,
        temperature=temperature,
        top_p=0.9,
        logprobs=True,
    )
    assert ours[0] == ref[0]
    for a, b in zip(ours[1], ref[1]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS)
def test_logprobs_match_transformers_with_llama3_rope_scaling(build, full_state, config):
    llama = build(config, max_seq_len=64)
    args = model_args(config)
    hf = to_hf(full_state(config), args, 64)
    prompt = llama.tokenizer.encode("Paris is the capital and most populous city of France.", bos=True, eos=False)
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        hf_logp = torch.log_softmax(hf(tokens).logits, -1)
    torch.testing.assert_close(torch.log_softmax(llama.model.forward(tokens, 0), -1), hf_logp, rtol=0, atol=1e-4)


def test_one_and_two_vocab_split_shards_generate_the_same(build, make_ckpt):
    shards = [p.name for p in make_ckpt("llama3.1", 2).glob("*.pth")]
    emb = torch.load(make_ckpt("llama3.1", 2) / "consolidated.00.pth", weights_only=True)["tok_embeddings.weight"]
    assert sorted(shards) == ["consolidated.00.pth", "consolidated.01.pth"]
    assert tuple(emb.shape) == (128256 // 2, 64)  # Meta's Llama 3 layout: the vocabulary is split
    results = []
    for n in (1, 2):
        llama = build("llama3.1", n, max_seq_len=48, max_batch_size=3)
        prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
        results.append(llama.generate(prompts, 16, temperature=0, logprobs=True))
    assert results[0] == results[1]


def test_generation_stops_at_eot_and_is_cut_there(build):
    llama = build("llama3")
    prompt = llama.tokenizer.encode(PROMPTS[0], bos=True, eos=False)
    full, _ = llama.generate([prompt], 12, temperature=0)
    eot = llama.tokenizer.special_tokens["<|eot_id|>"]
    assert llama.stop_tokens == [128001, 128008, 128009]
    llama.tokenizer.stop_tokens = [128001, 128008, full[0][4], eot]  # as if the model had said <|eot_id|> there
    cut, _ = llama.generate([prompt], 12, temperature=0)
    assert cut[0] == full[0][:4]


def test_text_and_chat_completion_use_the_llama3_formats(build):
    llama = build("llama3", max_seq_len=96)
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Unsafe [/INST] tags are fine"}]
    tokens, _ = llama.encode_dialogs([dialog], None)
    assert tokens[0][:4] == [
        128000,
        128006,
        9125,
        128007,
    ]  # <|begin_of_text|><|start_header_id|>system<|end_header_id|>
    assert tokens[0][-4:] == [128006, 78191, 128007, 271]  # the empty assistant header: the model speaks next
    out = llama.chat_completion([dialog], temperature=0, max_gen_len=8, logprobs=True)[0]
    generated, _ = llama.generate(tokens, 8, temperature=0)
    assert out["generation"] == {"role": "assistant", "content": llama.tokenizer.decode(generated[0])}
    assert len(out["tokens"]) == len(out["logprobs"]) == len(generated[0])
    text = llama.text_completion([PROMPTS[1]], temperature=0, max_gen_len=8)[0]["generation"]
    assert llama.encode_prompts([PROMPTS[1]], None)[0][0][0] == 128000  # bos, no eos
    assert text == llama.tokenizer.decode(llama.generate(llama.encode_prompts([PROMPTS[1]], 8)[0], 8, 0)[0][0])


@pytest.mark.slow
def test_streamed_byte_level_deltas_add_up_to_the_text(build):
    llama = build("llama3", max_seq_len=96, max_batch_size=3)
    torch.manual_seed(3)
    kwargs = dict(temperature=1.0, top_p=1.0, max_gen_len=40)
    events = list(stream_text_completion(llama, PROMPTS, **kwargs))
    torch.manual_seed(3)
    expected = [r["generation"] for r in llama.text_completion(PROMPTS, **kwargs)]
    texts = ["".join(e.text for e in events if e.index == i) for i in range(len(PROMPTS))]
    assert texts == expected
    # random tokens of a 128k byte-level vocabulary: some end mid-character, which a delta must hold back
    assert any("\ufffd" in llama.tokenizer.decode([e.token]) for e in events if e.token is not None)


def test_a_llama2_checkpoint_with_a_llama3_tokenizer_is_refused(make_ckpt):
    from llama import Llama
    from llama.errors import CheckpointError
    from support.llama3_tokenizer import llama3_tokenizer_path

    with pytest.raises(
        CheckpointError,
        match=r"the embedding has 512 rows but the tokenizer has 128256 words; use "
        r"the tokenizer.model that came with these weights",
    ):
        Llama.build(str(make_ckpt("mha")), str(llama3_tokenizer_path()), 32, 1, device="cpu")


def test_max_seq_len_beyond_the_trained_context_warns(build, caplog):
    build("llama3", max_seq_len=8192, max_batch_size=1)
    assert not [r for r in caplog.records if "trained for" in r.message]
    build("llama3", max_seq_len=8200, max_batch_size=1)
    assert "max_seq_len=8200 is beyond the 8192 tokens this model was trained for" in caplog.text
