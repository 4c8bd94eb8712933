"""A request while it holds one of the engine's slots (llama.decoding.engine): its prompt's progress,
its own sampler and stop checks, and the Completion it is building."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .detokenize import TextDeltas
from .requests import Completion, RequestHandle
from .sampler import Sampler, top_logprobs
from .stops import StopText


class ActiveSequence:
    """A request while it holds a slot."""

    def __init__(self, handle: RequestHandle, slot: int, cached: int, tokenizer, default_stops):
        request = handle.request
        self.handle, self.request, self.slot = handle, request, slot
        self.prompt = list(request.prompt_tokens)
        self.next_pos = cached  # the next prompt position to compute (prefill), len(prompt) after it
        self.sampler = Sampler(request.sampling, self.prompt)
        self.stops = set(default_stops if request.stop_tokens is None else request.stop_tokens)
        self.deltas = TextDeltas(tokenizer)
        self.stop_text = StopText(request.stop_strings)
        self.result = Completion(prompt_tokens=len(self.prompt), cached_tokens=cached)
        if request.logprobs:
            self.result.logprobs = []
            self.result.top_logprobs = [] if request.top_logprobs else None
        if request.prompt_logprobs:
            self.result.prompt_logprobs = [None]
            self.result.prompt_top_logprobs = [None]
        self.last: Optional[int] = None  # the newest token, to be fed in the next decode step
        self.blocks = 0  # cache blocks set aside for this sequence at its longest (Engine._admit)

    @property
    def prefilling(self) -> bool:
        return self.next_pos < len(self.prompt)

    def record(self, token: int, logits: Optional[torch.Tensor]) -> Tuple[Optional[float], Optional[list]]:
        """Append `token` (chosen from `logits`, (vocab,); needed only where log-probs are asked) -> its
        log-prob and top log-probs where asked."""
        result = self.result
        result.tokens.append(token)
        self.sampler.observe(token)
        if result.logprobs is None or logits is None:
            return None, None
        scores = F.log_softmax(logits, dim=-1)
        result.logprobs.append(float(scores[token]))
        top = top_logprobs(scores, self.request.top_logprobs) if self.request.top_logprobs else None
        if result.top_logprobs is not None:
            result.top_logprobs.append(top or [])
        return result.logprobs[-1], top
