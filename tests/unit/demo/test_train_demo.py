"""scripts/train_demo.py trains llama.model.Transformer itself: no process group, no private layer loop."""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from llama.model import Transformer
from support.helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))

import train_demo  # noqa: E402


def test_the_demo_trainer_builds_the_plain_transformer_without_a_process_group():
    model = train_demo.build_model(vocab_size=64, seq_len=16, seed=0)
    assert type(model) is Transformer
    assert {type(m).__name__ for m in model.modules()} >= {"Linear", "Embedding"}
    assert not dist.is_initialized() or dist.get_world_size() == 1


def test_one_training_step_reaches_every_weight():
    model = train_demo.build_model(vocab_size=64, seq_len=16, seed=0)
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    untouched = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert untouched == []
