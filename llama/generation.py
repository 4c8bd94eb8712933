"""Llama: build a model from a checkpoint directory, then generate, text- or chat-complete.

The facade over the package: `Llama.build` (llama.building) decides the runtime
(llama.runtime.backend), opens the checkpoint and loads this rank's share (llama.weights.loading),
and the methods run the decode loop
(llama.decoding.loop) on encoded prompts (llama.tokenizer, llama.chat_format). API, signatures and
outputs are those of Meta's `meta-llama/llama` and `meta-llama/llama3` `llama/generation.py`.
"""

import logging
from typing import Any, Iterator, List, Optional, Sequence, Tuple, TypedDict, Union

import torch

from . import building, demo
from .chat_format import UNSAFE_ERROR, Dialog, Message, encode_dialog, is_unsafe
from .decoding import native_step
from .decoding.batches import Decode, Row, Timings, run_batch
from .decoding.loop import DecodeState, decode_steps, start_decode
from .decoding.sampler import SamplingParams
from .decoding.sampling import sample_top_p
from .errors import ConfigError
from .model import Transformer
from .runtime.group import is_main_process
from .tokenizer import Tokenizer
from .tools.answer import tool_answer
from .tools.support import check_tool_model
from .validation import check_request, stop_list

__all__ = ["Llama", "Dialog", "Message", "CompletionPrediction", "ChatPrediction", "sample_top_p"]

logger = logging.getLogger(__name__)


class CompletionPrediction(TypedDict, total=False):
    generation: str
    tokens: List[str]
    logprobs: List[float]


class ChatPrediction(TypedDict, total=False):
    generation: Message
    tokens: List[str]
    logprobs: List[float]


class Llama:
    @staticmethod
    def build(
        ckpt_dir: str,
        tokenizer_path: Optional[str],
        max_seq_len: int,
        max_batch_size: int,
        model_parallel_size: Optional[int] = None,
        seed: int = 1,
        device=None,
        dtype=None,
        backend: Optional[str] = None,
        compile: bool = False,
        quantize: Optional[str] = None,
        kv_cache_tokens: Optional[int] = None,
        kv_cache_dtype: Optional[str] = None,
    ) -> "Llama":
        """Load a checkpoint directory on this process's share of the model-parallel group.

        tokenizer_path None: tokenizer.model in ckpt_dir, else ckpt_dir/original/tokenizer.model, else
        ckpt_dir/tokenizer.json.
        device, dtype and backend override the automatic choice made in `llama.runtime.backend`.
        compile: run one-token decode steps through torch.compile (static shapes; the first
        generate call pays the compilation), unless they run natively (llama.decoding.native_step, x86
        CPUs). quantize="int8" | "int4": weight-only (llama.layers.quantized). kv_cache_tokens: how many
        positions the paged KV cache may hold in all (default: max_batch_size x max_seq_len); on the
        CPU it grows with what it holds, elsewhere it is allocated at load (llama.kv_cache).
        kv_cache_dtype="float32" | "bfloat16" | "int8": how the cache stores keys and values (default:
        the model's dtype); attention reads them back in the model's dtype.
        """
        return Llama(
            *building.assemble(
                ckpt_dir, tokenizer_path, max_seq_len, max_batch_size, model_parallel_size, seed, device, dtype,
                backend, compile, quantize, kv_cache_tokens, kv_cache_dtype,
            )
        )  # fmt: skip

    @staticmethod
    def build_demo(**build_kwargs) -> "Llama":
        """The small model bundled in llama/demo/ (trained on Python's own documentation).

        build_kwargs go to `build`; max_seq_len and max_batch_size default to the demo's own.
        """
        kwargs = {"max_seq_len": demo.MAX_SEQ_LEN, "max_batch_size": demo.MAX_BATCH_SIZE, **build_kwargs}
        return Llama.build(str(demo.CKPT_DIR), str(demo.TOKENIZER_PATH), **kwargs)

    def __init__(self, model: Transformer, tokenizer: Tokenizer, decode_step=None, eos_check_every: int = 1):
        """decode_step(tokens (bsz, T), start_pos) -> logits: a faster path for one-token steps (T = 1),
        and for prompts where decode_step.takes_prompt(tokens) says so.
        eos_check_every: greedy decoding checks for "every row finished" only this often."""
        self.model = model
        self.tokenizer = tokenizer
        self.decode_step = decode_step
        self.eos_check_every = eos_check_every
        self.last_timings = Timings()  # the last call's prompt and generation times (llama.decoding.batches)

    @property
    def is_main(self) -> bool:
        """True on the process that should print (global rank 0, or no process group)."""
        return is_main_process()

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

    @property
    def stop_tokens(self) -> List[int]:
        return list(self.tokenizer.stop_tokens)

    @torch.inference_mode()
    def generate(
        self,
        prompt_tokens: List[List[int]],
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
        *,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]:
        """Continue each prompt; -> (tokens per row, log-probabilities per row or None).

        Each row is cut at its first stop token (eos; Llama 3: also <|eot_id|>, <|eom_id|>).
        top_k (0: off), repetition_penalty (1: off), frequency_penalty, presence_penalty (0: off; OpenAI's):
        opt-in, as the engine applies them (llama.decoding.sampler); all off, the draws are the reference's."""
        params = self.model.params
        sampling = SamplingParams(temperature, top_p, top_k, repetition_penalty, frequency_penalty, presence_penalty)
        self.check_request(prompt_tokens, sampling, max_gen_len)
        bsz = len(prompt_tokens)
        if bsz > params.max_batch_size:
            raise ConfigError(
                f"{bsz} prompts exceed max_batch_size={params.max_batch_size}; pass at most that many to "
                "generate, or build with a larger max_batch_size"
            )
        self.last_timings = Timings()
        if bsz == 0:
            return [], ([] if logprobs else None)
        rows = run_batch(self._decoder(max_gen_len, sampling, logprobs), prompt_tokens, max_gen_len, self.stop_tokens,
                         self.last_timings, echo)  # fmt: skip
        return [r.tokens for r in rows], ([r.logprobs or [] for r in rows] if logprobs else None)

    def check_request(self, prompt_tokens, sampling: SamplingParams, max_gen_len: int) -> None:
        """What generate checks before decoding (the streams check the same, before their first event)."""
        sampling.check()
        check_request(prompt_tokens, sampling.temperature, sampling.top_p, max_gen_len, self.tokenizer.n_words,
                      self.model.params.max_seq_len)  # fmt: skip

    def decode(
        self, prompt_tokens: List[List[int]], max_gen_len: int, sampling: SamplingParams, logprobs: bool = False
    ) -> Tuple[DecodeState, Iterator[int]]:
        """One batch's decode state and the (lazy) loop that fills it, step by step: see llama.decoding.loop"""
        state = start_decode(
            prompt_tokens, max_gen_len, self.model.params.max_seq_len, self.tokenizer.pad_id, self.device, logprobs
        )
        # The batch's cache blocks up front (its rows reach total_len at most): a pool too small for
        # them fails here, before any work, with the figures (llama.kv_cache).
        rows = range(len(prompt_tokens))
        self.model.kv_pool.ensure(rows, [state.total_len] * len(rows))
        steps = decode_steps(self._forward, state, sampling, self.stop_tokens, self.tokenizer.pad_id,
                             self.model.tok_embeddings.weight.dtype, self.eos_check_every)  # fmt: skip
        return state, self._freeing(steps, rows)

    def _freeing(self, steps: Iterator[int], rows: range) -> Iterator[int]:
        """The decode loop, whose rows give their cache blocks back to the pool when it ends."""
        try:
            yield from steps
        finally:
            for row in rows:
                self.model.kv_pool.truncate(row)

    def _decoder(self, max_gen_len: int, sampling: SamplingParams, logprobs: bool) -> Decode:
        return lambda batch: self.decode(batch, max_gen_len, sampling, logprobs)

    def _forward(self, tokens: torch.Tensor, start_pos: int, last_only: bool = False) -> torch.Tensor:
        step = self.decode_step
        if step is not None and (tokens.shape[1] == 1 or last_only and step.takes_prompt(tokens)):
            return step(tokens, start_pos)
        chunk = step.prompt_chunk(tokens) if last_only and isinstance(step, native_step.NativeDecode) else 0
        if chunk:  # a long quantized prompt: native calls of `chunk` tokens per row, the last one's logits
            for first in range(0, tokens.shape[1], chunk):
                logits = step(tokens[:, first : first + chunk], start_pos + first)
            return logits
        return self.model.forward(tokens, start_pos, last_only)

    def encode_prompts(self, prompts: List[str], max_gen_len: Optional[int]) -> Tuple[List[List[int]], int]:
        """text_completion's prompts -> (token lists starting with bos, max_gen_len with its default)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got a single str; wrap it in a list")
        tokens = [self.tokenizer.encode(x, bos=True, eos=False) for x in prompts]
        return tokens, self._gen_len(max_gen_len)

    def encode_dialogs(self, dialogs: List[Dialog], max_gen_len: Optional[int]) -> Tuple[List[List[int]], int]:
        """chat_completion's dialogs -> (token lists in the model family's chat format, max_gen_len with
        its default)."""
        tokens = [encode_dialog(self.tokenizer, d, i) for i, d in enumerate(dialogs)]
        return tokens, self._gen_len(max_gen_len)

    def unsafe(self, dialog: Dialog) -> bool:
        """Whether the answer to `dialog` is replaced by UNSAFE_ERROR (Llama 2's special-tag rule; never for
        Llama 3)."""
        return is_unsafe(self.tokenizer, dialog)

    def _gen_len(self, max_gen_len: Optional[int]) -> int:
        return self.model.params.max_seq_len - 1 if max_gen_len is None else max_gen_len

    def text_completion(
        self,
        prompts: List[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        echo: bool = False,
        *,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        stop: Union[None, str, Sequence[str]] = None,
    ) -> List[CompletionPrediction]:
        """top_k and the penalties: as in generate. stop: a string or a list; each generation ends
        before the first of them (its tokens with the one that completed it), not with echo."""
        sampling = SamplingParams(temperature, top_p, top_k, repetition_penalty, frequency_penalty, presence_penalty)
        stops = stop_list(stop, echo)
        prompt_tokens, max_gen_len = self.encode_prompts(prompts, max_gen_len)
        rows = self._rows(prompt_tokens, max_gen_len, sampling, logprobs, echo, stops)
        return [self._with_logprobs({"generation": self._text(r)}, r, logprobs) for r in rows]

    def chat_completion(
        self,
        dialogs: List[Dialog],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        tools: Optional[Sequence[Any]] = None,
        tool_prompt_format: str = "json",
        *,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        stop: Union[None, str, Sequence[str]] = None,
    ) -> List[ChatPrediction]:
        """tools (Llama 3.1+; llama.tools): built-in tool names and OpenAI-style function specs offered to the
        model; each generation then also has "tool_calls" (content "" when the answer is a call) and
        "stop_reason" ("end_of_turn", also after a stop string; "end_of_message": waiting for a tool
        result; "out_of_tokens"). top_k, the penalties and stop: as in text_completion."""
        sampling = SamplingParams(temperature, top_p, top_k, repetition_penalty, frequency_penalty, presence_penalty)
        stops = stop_list(stop)
        if tools:
            return self._chat_with_tools(dialogs, sampling, max_gen_len, logprobs, tools, tool_prompt_format, stops)
        prompt_tokens, max_gen_len = self.encode_dialogs(dialogs, max_gen_len)
        unsafe = [self.unsafe(d) for d in dialogs]
        rows = self._rows(prompt_tokens, max_gen_len, sampling, logprobs, stop=stops)
        out: List[ChatPrediction] = []
        for i, r in enumerate(rows):
            content = UNSAFE_ERROR if unsafe[i] else self._text(r)
            out.append(self._with_logprobs({"generation": {"role": "assistant", "content": content}}, r, logprobs))
        return out

    def _chat_with_tools(self, dialogs, sampling, max_gen_len, logprobs, tools, tool_prompt_format, stops):
        check_tool_model(self.tokenizer.kind, bool(getattr(self.model.params, "use_scaled_rope", False)))
        prompt_tokens = [
            encode_dialog(self.tokenizer, d, i, tools=tools, tool_prompt_format=tool_prompt_format)
            for i, d in enumerate(dialogs)
        ]
        rows = self._rows(prompt_tokens, self._gen_len(max_gen_len), sampling, logprobs, stop=stops, ends=True)
        ended = self.stop_tokens[0]  # a stop string ends the turn as <|end_of_text|> would: end_of_turn
        answers = [tool_answer(self._text(r), ended if r.by_text else r.stop_token, self.tokenizer) for r in rows]
        return [self._with_logprobs({"generation": a}, r, logprobs) for a, r in zip(answers, rows)]

    @torch.inference_mode()
    def _rows(self, prompt_tokens, max_gen_len, sampling, logprobs, echo=False, stop=(), ends=False) -> List[Row]:
        """generate's rows for any number of prompts (groups of max_batch_size), in input order; with
        stop strings or `ends`, each also with the stop token that ended it (tool calling tells
        <|eom_id|> from <|eot_id|> by it), else through generate itself, as the reference runs."""
        self.check_request(prompt_tokens, sampling, max_gen_len)  # once, with indices into the whole list
        size, decode = self.model.params.max_batch_size, self._decoder(max_gen_len, sampling, logprobs)
        timings, rows = Timings(), []
        for start in range(0, len(prompt_tokens), size):
            batch = prompt_tokens[start : start + size]
            if stop or ends:
                rows += run_batch(decode, batch, max_gen_len, self.stop_tokens, timings, echo, stop, self.tokenizer)
                continue
            tokens, probs = self.generate(batch, max_gen_len, sampling.temperature, sampling.top_p, logprobs, echo,
                                          **sampling.options())  # fmt: skip
            timings.add(self.last_timings)
            rows += [Row(t, probs[i] if probs is not None else None, None) for i, t in enumerate(tokens)]
        self.last_timings = timings
        return rows

    def _generate_with_stops(self, prompt_tokens, max_gen_len, temperature, top_p, logprobs):
        """-> (tokens, log-probabilities or None, the stop token that ended each row or None)."""
        rows = self._rows(prompt_tokens, max_gen_len, SamplingParams(temperature, top_p), logprobs, ends=True)
        probs = [r.logprobs for r in rows] if logprobs else None
        return [r.tokens for r in rows], probs, [r.stop_token for r in rows]

    def _text(self, row: Row) -> str:
        return row.text if row.text is not None else self.tokenizer.decode(row.tokens)

    def _with_logprobs(self, pred: Any, row: Row, logprobs: bool) -> Any:
        if logprobs:
            pred["tokens"] = [self.tokenizer.decode([x]) for x in row.tokens]
            pred["logprobs"] = row.logprobs
        return pred
