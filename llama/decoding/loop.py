"""The decode loop, its state and sampling: what `Llama.generate` and the streams both run.

Faithful to Meta's `generate` (`meta-llama/llama`, `llama/generation.py`; Llama 3's stops at any
of several stop tokens): prompts left-aligned in a (bsz, total_len) buffer of pad_id, decoding
from the shortest prompt's end, prompt positions never overwritten, a row finished when it
generates a stop token, the loop over when every row is.
"""

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import GenerationError
from .sampler import SamplingParams, limit_top_k, penalize
from .sampling import sample_next

# (tokens (bsz, seqlen), start_pos, last_only) -> float32 logits (bsz, seqlen or, with last_only, 1, vocab)
Forward = Callable[[torch.Tensor, int, bool], torch.Tensor]


@dataclass
class DecodeState:
    """The buffers of one batched decode: (bsz, total_len) tokens, updated in place step by step."""

    tokens: torch.Tensor
    token_logprobs: Optional[torch.Tensor]
    input_text_mask: torch.Tensor  # True where a prompt token sits (never overwritten)
    finished: torch.Tensor  # per row: generated a stop token
    min_prompt_len: int
    total_len: int


def start_decode(
    prompt_tokens: List[List[int]],
    max_gen_len: int,
    max_seq_len: int,
    pad_id: int,
    device: torch.device,
    logprobs: bool,
) -> DecodeState:
    """Lay the prompts out in a (bsz, total_len) buffer of pad_id, total_len = min(max_seq_len,
    max_gen_len + longest prompt)."""
    bsz = len(prompt_tokens)
    lengths = [len(t) for t in prompt_tokens]
    total_len = min(max_seq_len, max_gen_len + max(lengths))
    tokens = torch.full((bsz, total_len), pad_id, dtype=torch.long, device=device)
    for k, t in enumerate(prompt_tokens):
        tokens[k, : len(t)] = torch.tensor(t, dtype=torch.long, device=device)
    token_logprobs = torch.zeros_like(tokens, dtype=torch.float) if logprobs else None
    finished = torch.zeros(bsz, dtype=torch.bool, device=device)
    return DecodeState(tokens, token_logprobs, tokens != pad_id, finished, min(lengths), total_len)


@torch.inference_mode()
def decode_steps(
    forward: Forward,
    state: DecodeState,
    params: SamplingParams,
    stop_tokens: Sequence[int],
    pad_id: int,
    weight_dtype: torch.dtype,
    check_every: int = 1,
) -> Iterator[int]:
    """Run the decode loop on `state`, yielding each position just written (for all rows at once).

    params: temperature and top_p as the reference samples; top_k and the penalties, when set, change
    the logits first (llama.decoding.sampler: the engine's rules), then the reference's draw runs.

    weight_dtype names the likely cause when the logits stop being finite.
    check_every: greedy decoding reads "every row finished?" (and "all logits finite?") back
    from the device only this often; sampling checks every step, since running on would
    consume random draws the reference does not.
    """
    temperature, top_p = params.temperature, params.top_p
    tokens, token_logprobs, input_text_mask = state.tokens, state.token_logprobs, state.input_text_mask
    finished, min_prompt_len, total_len = state.finished, state.min_prompt_len, state.total_len
    stops = torch.tensor(list(stop_tokens), dtype=torch.long, device=tokens.device)
    prev_pos = 0
    last_only = token_logprobs is None  # without log-probs only the last position's logits are read
    if min_prompt_len == total_len:
        logits = forward(tokens, prev_pos, last_only)
        if token_logprobs is not None:  # the reference scores against the token's own position; use the previous one
            token_logprobs[:, 1:] = token_logprobs_of(logits[:, :-1], tokens[:, 1:], pad_id)

    check_every = check_every if temperature == 0 else 1
    all_finite = torch.ones((), dtype=torch.bool, device=tokens.device)
    for cur_pos in range(min_prompt_len, total_len):
        logits = forward(tokens[:, prev_pos:cur_pos], prev_pos, last_only)
        last_logits = logits[:, -1]
        if temperature > 0:  # multinomial would fail on non-finite probabilities with torch's own words
            check_finite(torch.isfinite(last_logits).all(), weight_dtype)
        else:  # greedy: no host sync here; checked below, with the stop tokens
            all_finite &= torch.isfinite(last_logits).all()
        if params.top_k or params.penalized:
            last_logits = adjust_logits(last_logits, params, tokens[:, :cur_pos], input_text_mask[:, :cur_pos], pad_id)
        next_token = sample_next(last_logits, temperature, top_p)
        next_token = torch.where(input_text_mask[:, cur_pos], tokens[:, cur_pos], next_token)
        tokens[:, cur_pos] = next_token
        if token_logprobs is not None:
            token_logprobs[:, prev_pos + 1 : cur_pos + 1] = token_logprobs_of(
                logits, tokens[:, prev_pos + 1 : cur_pos + 1], pad_id
            )
        finished |= (~input_text_mask[:, cur_pos]) & torch.isin(next_token, stops)
        prev_pos = cur_pos
        check_now = (cur_pos - min_prompt_len + 1) % check_every == 0 or cur_pos + 1 == total_len
        if check_now and temperature == 0:
            check_finite(all_finite, weight_dtype)
        yield cur_pos
        if check_now and bool(finished.all()):
            break


def adjust_logits(
    logits: torch.Tensor, params: SamplingParams, before: torch.Tensor, in_prompt: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """(bsz, vocab) logits with the opt-in penalties and top_k of `params`; before (bsz, cur_pos): the
    tokens so far (prompt and answer: the repetition penalty's), in_prompt: which are the prompt's
    (the frequency and presence penalties count the answer's only)."""
    if params.penalized:
        ids = torch.where(before == pad_id, before[:, :1], before)  # a prompt's first token stands in for padding
        generated = (~in_prompt & (before != pad_id)).to(logits.dtype)
        logits = penalize(logits, params, ids, ids, generated)
    return limit_top_k(logits, params.top_k)


def check_finite(all_finite: torch.Tensor, dtype: torch.dtype) -> None:
    """all_finite: a bool tensor, False once any logit was inf or nan. Non-finite logits would make
    sampling fail deep in torch.multinomial (or argmax pick garbage), so say what happened."""
    if not bool(all_finite):
        raise non_finite_error(dtype)


def non_finite_error(dtype: torch.dtype) -> GenerationError:
    """The error for non-finite logits from a model with `dtype` weights, naming the likely cause."""
    name = str(dtype).replace("torch.", "")
    if dtype == torch.float16:
        fix = "float16 overflowed: run with --dtype bfloat16 or --dtype float32 (Llama.build(dtype=...))"
    else:
        fix = "the checkpoint probably holds inf/nan weights: download it again, or try --dtype float32"
    return GenerationError(f"the model produced non-finite logits (inf or nan) with {name} weights; {fix}")


def token_logprobs_of(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(target_i | logits_i); 0 where the target is padding."""
    return -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=pad_id)


def first_stop(tokens: Sequence[int], stop_tokens: Sequence[int]) -> int:
    """Index of the first stop token in `tokens`, or len(tokens)."""
    return next((i for i, t in enumerate(tokens) if t in stop_tokens), len(tokens))


def collect(state: DecodeState, prompt_tokens, max_gen_len: int, stop_tokens: Sequence[int], echo: bool):
    """Cut each row to its generation (or prompt + generation with echo), stopping at the first stop token."""
    rows = state.tokens.tolist()
    all_probs = state.token_logprobs.tolist() if state.token_logprobs is not None else None
    out_tokens, out_probs = [], []
    for i, toks in enumerate(rows):
        start = 0 if echo else len(prompt_tokens[i])
        end = len(prompt_tokens[i]) + max_gen_len
        toks = toks[start:end]
        cut = first_stop(toks, stop_tokens)
        out_tokens.append(toks[:cut])
        out_probs.append(all_probs[i][start:end][:cut] if all_probs is not None else None)
    return out_tokens, (out_probs if all_probs is not None else None)
