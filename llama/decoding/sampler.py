"""One sequence's choice of its next token, as the engine makes it: greedy or top-p (nucleus) sampling
with opt-in top-k and repetition, frequency and presence penalties, each sequence drawing from its
own seeded generator, so that the same seed gives the same tokens alone or beside other sequences.

The nucleus is the reference's (`meta-llama/llama`, `llama/generation.py`, sample_top_p: keep the
most likely tokens until the mass before a token exceeds top_p, renormalise), found without sorting
the whole vocabulary: the most likely tokens are taken a few at a time (torch.topk) until they hold
the mass. The draws are not the reference's (its torch.multinomial consumes the global generator);
`Llama.generate` keeps those.
"""

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError
from ..validation import check_sampling, whole_number

FIRST_NUCLEUS = 64  # candidates taken first; x4 each time they hold less than top_p


OPTIONS = ("top_k", "repetition_penalty", "frequency_penalty", "presence_penalty")  # beyond the reference's


@dataclass(frozen=True)
class SamplingParams:
    """How a sequence chooses its tokens. The defaults are the reference's sampling (temperature 0.6,
    top_p 0.9) with every addition off; temperature 0 is greedy."""

    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 0  # 0: off; else only the k most likely tokens
    repetition_penalty: float = 1.0  # > 1 discourages every token already in the prompt or answer
    frequency_penalty: float = 0.0  # OpenAI's: minus this times how often a token was generated so far
    presence_penalty: float = 0.0  # OpenAI's: minus this once a token was generated at all
    seed: Optional[int] = None  # None: a random seed

    def check(self) -> None:
        """ConfigError naming the first value out of range."""
        check_sampling(self.temperature, self.top_p, None)
        whole_number("top_k", self.top_k, minimum=0, fix="; 0 turns it off")
        if not _finite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty must be a number > 0 (1 = off), got {self.repetition_penalty!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if not _finite(value) or not -2 <= value <= 2:
                raise ConfigError(f"{name} must be a number in [-2, 2] (0 = off), got {value!r}")
        if self.seed is not None:
            whole_number("seed", self.seed, minimum=None)

    def options(self) -> dict:
        """The opt-in additions, as keyword arguments (of Llama.generate)."""
        return {name: getattr(self, name) for name in OPTIONS}

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Sampler:
    """One sequence's sampling state: its parameters and its own random generator."""

    def __init__(self, params: SamplingParams, prompt: Sequence[int]):
        self.params = params
        seed = params.seed if params.seed is not None else random.SystemRandom().randrange(2**63)
        self.generator = torch.Generator().manual_seed(seed)
        self.seen = set(prompt)  # the repetition penalty's tokens (prompt and answer)
        self.counts: Counter = Counter()  # generated tokens, for the frequency and presence penalties

    @property
    def greedy(self) -> bool:
        """Whether choose() is the plain argmax of the logits."""
        return self.params.temperature == 0 and not self.params.penalized

    def choose(self, logits: torch.Tensor) -> int:
        """logits (vocab,) float32 of the next position -> the chosen token."""
        p = self.params
        if p.penalized:
            logits = self._penalize(logits)
        if p.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / p.temperature, dim=-1)
        if p.top_k:
            values, index = torch.topk(probs, min(p.top_k, probs.shape[-1]))
            return self._draw(*_nucleus(values, index, p.top_p))
        if p.top_p >= 1.0:
            return self._draw(probs, None)
        values, index = _top_mass(probs, p.top_p)
        return self._draw(*_nucleus(values, index, p.top_p))

    def observe(self, token: int) -> None:
        """Record a generated token (for the penalties)."""
        self.seen.add(token)
        self.counts[token] += 1

    def _penalize(self, logits: torch.Tensor) -> torch.Tensor:
        generated = torch.tensor(list(self.counts), dtype=torch.long)
        counts = torch.tensor([self.counts[t] for t in self.counts], dtype=logits.dtype)
        return penalize(logits, self.params, torch.tensor(sorted(self.seen), dtype=torch.long), generated, counts)

    def _draw(self, probs: torch.Tensor, index: Optional[torch.Tensor]) -> int:
        """One draw from `probs` (unnormalised), mapped through `index` where given."""
        cumulative = torch.cumsum(probs, dim=-1)
        u = torch.rand((), generator=self.generator) * cumulative[-1]
        at = min(int(torch.searchsorted(cumulative, u, right=True)), probs.shape[-1] - 1)
        return int(index[at]) if index is not None else at


def penalize(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor, generated: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """logits (..., vocab) with the penalties of `params` (a new tensor): the repetition penalty on the
    token ids in `seen` (..., n), the frequency and presence penalties on those in `generated` (..., m),
    each counted `weights` (..., m) times (0: not at all). Ids may repeat, in both."""
    logits = logits.clone()
    r = params.repetition_penalty
    if r != 1.0 and seen.numel():
        picked = logits.gather(-1, seen)
        logits.scatter_(-1, seen, torch.where(picked > 0, picked / r, picked * r))
    if (params.frequency_penalty or params.presence_penalty) and generated.numel():
        counts = torch.zeros_like(logits).scatter_add_(-1, generated, weights.to(logits.dtype))
        logits -= counts * params.frequency_penalty + (counts > 0) * params.presence_penalty
    return logits


def limit_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """logits (..., vocab) with all but the k largest of each row set to -inf (k 0 or >= vocab: as they are)."""
    if not 0 < k < logits.shape[-1]:
        return logits
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, torch.topk(logits, k).indices, True)
    return logits.masked_fill(~keep, float("-inf"))


def _top_mass(probs: torch.Tensor, top_p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens (descending), enough of them to hold more than top_p of the mass."""
    k = min(FIRST_NUCLEUS, probs.shape[-1])
    while True:
        values, index = torch.topk(probs, k)
        if k == probs.shape[-1] or float(values.sum()) > top_p:
            return values, index
        k = min(k * 4, probs.shape[-1])


def _nucleus(values: torch.Tensor, index: torch.Tensor, top_p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference's cut on descending probabilities: drop a token once the mass before it exceeds top_p."""
    before = torch.cumsum(values, dim=-1) - values
    keep = before <= top_p
    return values[keep], index[keep]


def top_logprobs(logprobs: torch.Tensor, n: int) -> List[Tuple[int, float]]:
    """The n most likely tokens with their log-probabilities, most likely first."""
    values, index = torch.topk(logprobs, min(n, logprobs.shape[-1]))
    return list(zip(index.tolist(), values.tolist()))
