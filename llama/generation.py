"""Llama: build a model from a checkpoint directory, then generate, text- or chat-complete.

The facade over the package: `Llama.build` decides the runtime (llama.runtime.backend), opens the
checkpoint and loads this rank's share (llama.weights.loading), and the methods run the decode loop
(llama.decoding.loop) on encoded prompts (llama.tokenizer, llama.chat_format). API, signatures and
outputs are those of Meta's `meta-llama/llama` and `meta-llama/llama3` `llama/generation.py`.
"""

import logging
import time
from typing import Any, Iterator, List, Optional, Sequence, Tuple, TypedDict

import torch

from . import demo
from .chat_format import UNSAFE_ERROR, Dialog, Message, encode_dialog, is_unsafe
from .decoding import native_step
from .decoding.loop import DecodeState, collect, decode_steps, first_stop, start_decode
from .decoding.sampling import sample_top_p
from .decoding.static_step import StaticDecode
from .errors import ConfigError
from .kernels.formats import check_method
from .layers.parallel import init_model_parallel, model_parallel_group, model_parallel_rank
from .model import ModelArgs, Transformer
from .runtime import memory
from .runtime.backend import Runtime, select
from .runtime.device_tuning import compile_options, eos_check_interval
from .runtime.distributed import barrier_then_tighten_timeouts, init_distributed
from .runtime.group import is_main_process
from .runtime.ranks import on_all_ranks
from .tokenizer import Tokenizer
from .tools.answer import tool_answer
from .tools.support import check_tool_model
from .validation import check_request, whole_number
from .weights import loading, meta

__all__ = ["Llama", "Dialog", "Message", "CompletionPrediction", "ChatPrediction", "sample_top_p"]

logger = logging.getLogger(__name__)

# The context each family was trained for; longer ones still run, but quality degrades.
LLAMA2_CONTEXT, LLAMA3_CONTEXT, LLAMA31_CONTEXT = 4096, 8192, 131072


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
    ) -> "Llama":
        """Load a checkpoint directory on this process's share of the model-parallel group.

        tokenizer_path None: tokenizer.model in ckpt_dir, else ckpt_dir/original/tokenizer.model, else
        ckpt_dir/tokenizer.json.
        device, dtype and backend override the automatic choice made in `llama.runtime.backend`.
        compile: run one-token decode steps through torch.compile (static shapes; the first
        generate call pays the compilation), unless they run natively (llama.decoding.native_step, x86
        CPUs). quantize="int8" | "int4": weight-only (llama.layers.quantized).
        """
        whole_number("max_seq_len", max_seq_len)
        whole_number("max_batch_size", max_batch_size)
        whole_number("seed", seed, minimum=None)
        check_method(quantize)
        start_time = time.time()
        ckpt = loading.open_checkpoint(ckpt_dir)
        tokenizer = Tokenizer(model_path=meta.find_tokenizer(ckpt_dir, tokenizer_path))
        args = _model_args(ckpt, tokenizer, max_seq_len, max_batch_size)

        rt = select(device=device, dtype=dtype, backend=backend)
        mp_size = _model_parallel_size(rt, model_parallel_size)
        # Before any process joins the group: every rank fails alike, and none leaves mid-rendezvous.
        meta.check_parallelism(ckpt.n_shards, mp_size, args.n_heads, args.kv_heads)
        memory.check_fits(args, mp_size, rt.device, rt.dtype)
        init_distributed(rt)
        init_model_parallel(mp_size)
        if is_main_process():
            logger.info("runtime: %s", _describe(rt, quantize or ckpt.stored))  # also what a checkpoint is stored in
        torch.manual_seed(seed)
        model = on_all_ranks(loading.load_model_or_explain, ckpt, args, mp_size, model_parallel_rank(), rt, quantize)
        barrier_then_tighten_timeouts(rt, model_parallel_group())
        if is_main_process():
            print(f"Loaded in {time.time() - start_time:.2f} seconds")
        # One-token steps: on an x86 CPU one native call (faster than a compiled step, so it wins over
        # compile=True); else compiled if asked; else llama.model's forward.
        decode_step: Any = native_step.for_model(model)
        if decode_step is None and compile:
            decode_step = StaticDecode(model, compile_options(rt.device))
        return Llama(model, tokenizer, decode_step, eos_check_interval(rt.device))

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
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]:
        """Continue each prompt; -> (tokens per row, log-probabilities per row or None).

        Each row is cut at its first stop token (eos; Llama 3: also <|eot_id|>, <|eom_id|>)."""
        params = self.model.params
        self.check_request(prompt_tokens, temperature, top_p, max_gen_len)
        bsz = len(prompt_tokens)
        if bsz > params.max_batch_size:
            raise ConfigError(
                f"{bsz} prompts exceed max_batch_size={params.max_batch_size}; pass at most that many to "
                "generate, or build with a larger max_batch_size"
            )
        if bsz == 0:
            return [], ([] if logprobs else None)
        state, steps = self.decode(prompt_tokens, max_gen_len, temperature, top_p, logprobs)
        for _ in steps:
            pass
        return collect(state, prompt_tokens, max_gen_len, self.stop_tokens, echo)

    def check_request(self, prompt_tokens, temperature: float, top_p: float, max_gen_len: int) -> None:
        """What generate checks before decoding (the streams check the same, before their first event)."""
        check_request(
            prompt_tokens, temperature, top_p, max_gen_len, self.tokenizer.n_words, self.model.params.max_seq_len
        )

    def decode(
        self, prompt_tokens: List[List[int]], max_gen_len: int, temperature: float, top_p: float, logprobs: bool = False
    ) -> Tuple[DecodeState, Iterator[int]]:
        """One batch's decode state and the (lazy) loop that fills it, step by step: see llama.decoding.loop"""
        state = start_decode(
            prompt_tokens, max_gen_len, self.model.params.max_seq_len, self.tokenizer.pad_id, self.device, logprobs
        )
        steps = decode_steps(
            self._forward,
            state,
            temperature,
            top_p,
            self.stop_tokens,
            self.tokenizer.pad_id,
            self.model.tok_embeddings.weight.dtype,
            self.eos_check_every,
        )
        return state, steps

    def _forward(self, tokens: torch.Tensor, start_pos: int, last_only: bool = False) -> torch.Tensor:
        step = self.decode_step
        if step is not None and (tokens.shape[1] == 1 or last_only and step.takes_prompt(tokens)):
            return step(tokens, start_pos)
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
    ) -> List[CompletionPrediction]:
        prompt_tokens, max_gen_len = self.encode_prompts(prompts, max_gen_len)
        tokens, probs = self._generate_in_batches(prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo)
        out: List[CompletionPrediction] = []
        for i, t in enumerate(tokens):
            pred: CompletionPrediction = {"generation": self.tokenizer.decode(t)}
            if logprobs:
                pred["tokens"] = [self.tokenizer.decode([x]) for x in t]
                pred["logprobs"] = probs[i]
            out.append(pred)
        return out

    def chat_completion(
        self,
        dialogs: List[Dialog],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        tools: Optional[Sequence[Any]] = None,
        tool_prompt_format: str = "json",
    ) -> List[ChatPrediction]:
        """tools (Llama 3.1+; llama.tools): built-in tool names and OpenAI-style function specs offered to the
        model; each generation then also has "tool_calls" (content "" when the answer is a call) and
        "stop_reason" ("end_of_turn", "end_of_message": waiting for a tool result, "out_of_tokens")."""
        if tools:
            return self._chat_with_tools(dialogs, temperature, top_p, max_gen_len, logprobs, tools, tool_prompt_format)
        prompt_tokens, max_gen_len = self.encode_dialogs(dialogs, max_gen_len)
        unsafe = [self.unsafe(d) for d in dialogs]
        tokens, probs = self._generate_in_batches(prompt_tokens, max_gen_len, temperature, top_p, logprobs)
        out: List[ChatPrediction] = []
        for i, t in enumerate(tokens):
            content = UNSAFE_ERROR if unsafe[i] else self.tokenizer.decode(t)
            pred: ChatPrediction = {"generation": {"role": "assistant", "content": content}}
            if logprobs:
                pred["tokens"] = [self.tokenizer.decode([x]) for x in t]
                pred["logprobs"] = probs[i]
            out.append(pred)
        return out

    def _chat_with_tools(self, dialogs, temperature, top_p, max_gen_len, logprobs, tools, tool_prompt_format):
        check_tool_model(self.tokenizer.kind, bool(getattr(self.model.params, "use_scaled_rope", False)))
        prompt_tokens = [
            encode_dialog(self.tokenizer, d, i, tools=tools, tool_prompt_format=tool_prompt_format)
            for i, d in enumerate(dialogs)
        ]
        max_gen_len = self._gen_len(max_gen_len)
        tokens, probs, stops = self._generate_with_stops(prompt_tokens, max_gen_len, temperature, top_p, logprobs)
        out: List[ChatPrediction] = []
        for i, t in enumerate(tokens):
            pred: ChatPrediction = {"generation": tool_answer(self.tokenizer.decode(t), stops[i], self.tokenizer)}
            if logprobs:
                pred["tokens"] = [self.tokenizer.decode([x]) for x in t]
                pred["logprobs"] = probs[i]
            out.append(pred)
        return out

    @torch.inference_mode()
    def _generate_with_stops(self, prompt_tokens, max_gen_len, temperature, top_p, logprobs):
        """_generate_in_batches, plus the stop token that ended each row (None: it ran out of tokens); the
        rows are cut where generate cuts them. Tool calling tells <|eom_id|> from <|eot_id|> by it."""
        self.check_request(prompt_tokens, temperature, top_p, max_gen_len)
        size = self.model.params.max_batch_size
        tokens, probs, stops = [], [], []
        for start in range(0, len(prompt_tokens), size):
            batch = prompt_tokens[start : start + size]
            state, steps = self.decode(batch, max_gen_len, temperature, top_p, logprobs)
            for _ in steps:
                pass
            rows, row_probs = collect(state, batch, max_gen_len, [], echo=False)  # uncut: the stop token stays
            for k, row in enumerate(rows):
                cut = first_stop(row, self.stop_tokens)
                tokens.append(row[:cut])
                stops.append(row[cut] if cut < len(row) else None)
                probs.append(row_probs[k][:cut] if row_probs is not None else None)
        return tokens, (probs if logprobs else None), stops

    def _generate_in_batches(self, prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo=False):
        """generate() on consecutive groups of at most max_batch_size prompts; results in input order."""
        self.check_request(prompt_tokens, temperature, top_p, max_gen_len)  # once, with indices into the whole list
        size = self.model.params.max_batch_size
        tokens, probs = [], []
        for start in range(0, len(prompt_tokens), size):
            t, p = self.generate(prompt_tokens[start : start + size], max_gen_len, temperature, top_p, logprobs, echo)
            tokens += t
            probs += p or []
        return tokens, (probs if logprobs else None)


def _model_parallel_size(rt: Runtime, requested: Optional[int]) -> int:
    """The reference's default (every process) or the requested size, which must divide the processes."""
    size = rt.world_size if requested is None else whole_number("model_parallel_size", requested)
    if rt.world_size % size:
        raise ConfigError(f"model_parallel_size={size} must divide the number of processes ({rt.world_size})")
    return size


def _model_args(ckpt: "loading.Checkpoint", tokenizer: Tokenizer, max_seq_len: int, max_batch_size: int) -> ModelArgs:
    """params.json + the run's sizes; the vocabulary is the tokenizer's, as in the reference."""
    declared = ckpt.params.get("vocab_size", -1)
    if declared > 0 and declared != tokenizer.n_words:
        raise ConfigError(
            f"params.json in {str(ckpt.path)!r} says vocab_size={declared}, but the tokenizer has "
            f"{tokenizer.n_words} words; use the tokenizer.model that came with these weights"
        )
    args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=max_batch_size, **ckpt.params)
    args.vocab_size = tokenizer.n_words
    trained = _trained_context(args, tokenizer)
    if max_seq_len > trained and is_main_process():
        logger.warning(
            "max_seq_len=%d is beyond the %d tokens this model was trained for; text past that point degrades",
            max_seq_len,
            trained,
        )
    return args


def _trained_context(args: ModelArgs, tokenizer: Tokenizer) -> int:
    if args.use_scaled_rope:
        return LLAMA31_CONTEXT
    if tokenizer.kind == "tiktoken":
        return LLAMA3_CONTEXT
    return LLAMA2_CONTEXT if args.rope_theta == 10000.0 else LLAMA31_CONTEXT  # Code Llama: long contexts


def _describe(rt: Runtime, quantize: Optional[str]) -> str:
    return rt.describe() + (f" quantize={quantize}" if quantize else "")
