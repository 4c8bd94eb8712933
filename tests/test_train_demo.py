"""scripts/train_demo.py trains llama.model.Transformer itself, with the inference math."""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import train_demo  # noqa: E402


def test_training_forward_equals_the_cached_inference_forward():
    model = train_demo.build_model(vocab_size=64, seq_len=16, seed=0)
    tokens = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    trained = train_demo.training_logits(model, tokens)
    model.setup_caches()  # real KV caches, as Llama.build sets them up
    whole = model.forward(tokens, 0)
    in_two_steps = torch.cat([model.forward(tokens[:, :9], 0), model.forward(tokens[:, 9:], 9)], dim=1)
    torch.testing.assert_close(trained, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained, in_two_steps, atol=1e-5, rtol=1e-5)


def test_one_training_step_reaches_every_weight():
    model = train_demo.build_model(vocab_size=64, seq_len=16, seed=0)
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    logits = train_demo.training_logits(model, tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    untouched = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert untouched == []
