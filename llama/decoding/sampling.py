"""Choosing the next token from the logits: argmax at temperature 0, else top-p (nucleus) sampling
over softmax(logits / temperature), with the reference's draws (`meta-llama/llama`,
`llama/generation.py`, sample_top_p)."""

import torch


def sample_next(last_logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(bsz, vocab) logits -> (bsz,) next tokens: top-p over softmax(logits / temperature), or argmax at 0."""
    if temperature > 0:
        probs = torch.softmax(last_logits / temperature, dim=-1)
        next_token = sample_top_p(probs, top_p)
    else:
        next_token = torch.argmax(last_logits, dim=-1)
    return next_token.reshape(-1)


def sample_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling: keep the smallest prefix of tokens (by probability) whose mass reaches p.

    A token is dropped when the mass of the tokens before it already exceeds p. -> (bsz, 1) indices.
    """
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p
    probs_sort[mask] = 0.0
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    next_token = torch.multinomial(probs_sort, num_samples=1)
    return torch.gather(probs_idx, -1, next_token)
