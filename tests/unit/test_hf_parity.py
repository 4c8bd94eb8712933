"""External parity: the same weights in Hugging Face transformers' LlamaForCausalLM."""

import pytest
import torch

from llama.testing.synthetic import tiny_args as model_args
from support.hf_reference import to_hf

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("config", ["mha", "gqa"])
def test_logits_and_greedy_tokens_match_transformers(build, full_state, config):
    llama = build(config, max_seq_len=64)
    hf = to_hf(full_state(config), model_args(config), 64)
    prompt = llama.tokenizer.encode("def fibonacci(n): return the sum of", bos=True, eos=False)
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        hf_logits = hf(tokens).logits
    ours = llama.model.forward(tokens, 0)
    torch.testing.assert_close(ours, hf_logits, rtol=0, atol=1e-4)

    generated, _ = llama.generate([prompt], max_gen_len=12, temperature=0)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            nxt = int(hf(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == llama.tokenizer.eos_id:
                break
            seq.append(nxt)
    assert generated[0] == seq[len(prompt) :]
