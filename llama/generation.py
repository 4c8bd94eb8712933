"""Llama: build a model from a Meta checkpoint directory, and generate, text- or chat-complete."""
import logging
import math
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from numbers import Integral
from typing import Iterator, List, Optional, Sequence, Tuple, TypedDict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fairscale.nn.model_parallel import initialize as fs_init

from . import checkpoint, demo, memory
from . import quantize as quant
from .backend import Runtime, select
from .distributed import barrier_then_tighten_timeouts as loaded
from .distributed import init_distributed
from .chat_format import UNSAFE_ERROR, Dialog, Message, encode_dialog, has_special_tags  # noqa: F401
from .decode import StaticDecode
from .errors import ConfigError, GenerationError
from .model import ModelArgs, Transformer
from .progress import slow_progress
from .ranks import on_all_ranks
from .tokenizer import Tokenizer
from .tuning import compile_options, eos_check_interval

logger = logging.getLogger(__name__)


class CompletionPrediction(TypedDict, total=False):
    generation: str
    tokens: List[str]
    logprobs: List[float]


class ChatPrediction(TypedDict, total=False):
    generation: Message
    tokens: List[str]
    logprobs: List[float]


@dataclass
class DecodeState:
    """The buffers of one batched decode: (bsz, total_len) tokens, updated in place step by step."""

    tokens: torch.Tensor
    token_logprobs: Optional[torch.Tensor]
    input_text_mask: torch.Tensor  # True where a prompt token sits (never overwritten)
    eos_reached: torch.Tensor
    min_prompt_len: int
    total_len: int


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a whole number > 0, got {value!r}")
    return value


def _init_model_parallel(size: int) -> None:
    if fs_init.model_parallel_is_initialized():
        return
    with redirect_stdout(StringIO()) as chatter:  # fairscale prints its group sizes on every rank
        fs_init.initialize_model_parallel(size)
    logger.debug(chatter.getvalue().strip())


class Llama:
    @staticmethod
    def build(
        ckpt_dir: str,
        tokenizer_path: str,
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
        """Load a Meta checkpoint directory on this process's share of the model-parallel group.

        device, dtype and backend override the automatic choice made in `llama.backend`.
        compile: run one-token decode steps through torch.compile (static shapes; the first
        generate call pays the compilation). quantize="int8": int8 weight-only (llama.quantize).
        """
        _positive("max_seq_len", max_seq_len)
        _positive("max_batch_size", max_batch_size)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        quant.check_method(quantize)
        start_time = time.time()
        shards = checkpoint.find_shards(ckpt_dir)
        params = checkpoint.read_params(ckpt_dir)
        tokenizer = Tokenizer(model_path=tokenizer_path)

        rt = select(device=device, dtype=dtype, backend=backend)
        init_distributed(rt)
        mp_size = rt.world_size if model_parallel_size is None else _positive("model_parallel_size", model_parallel_size)
        if rt.world_size % mp_size:
            raise ConfigError(f"model_parallel_size={mp_size} must divide the number of processes ({rt.world_size})")
        _init_model_parallel(mp_size)
        if rt.is_main:
            logger.info("runtime: %s", rt.describe())
        torch.manual_seed(seed)

        model_args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=max_batch_size, **params)
        model_args.vocab_size = tokenizer.n_words
        mp_rank = fs_init.get_model_parallel_rank()
        checkpoint.check_parallelism(len(shards), mp_size, model_args.n_heads, model_args.kv_heads)
        memory.check_fits(model_args, mp_size, rt.device, rt.dtype)
        model = on_all_ranks(_load_model_or_explain, model_args, shards, mp_size, mp_rank, rt, quantize)
        loaded(rt)
        if rt.is_main:
            print(f"Loaded in {time.time() - start_time:.2f} seconds")
        decode_step = StaticDecode(model, compile_options(rt.device)) if compile else None
        return Llama(model, tokenizer, decode_step, eos_check_interval(rt.device))

    @staticmethod
    def build_demo(**build_kwargs) -> "Llama":
        """The small model bundled in llama/demo/ (trained on Python's own documentation).

        build_kwargs go to `build`; max_seq_len and max_batch_size default to the demo's own.
        """
        kwargs = {"max_seq_len": demo.MAX_SEQ_LEN, "max_batch_size": demo.MAX_BATCH_SIZE, **build_kwargs}
        return Llama.build(str(demo.CKPT_DIR), str(demo.TOKENIZER_PATH), **kwargs)

    def __init__(self, model: Transformer, tokenizer: Tokenizer, decode_step=None, eos_check_every: int = 1):
        """decode_step(tokens (bsz, 1), start_pos) -> logits: a faster path for one-token steps.
        eos_check_every: greedy decoding checks for "every row finished" only this often."""
        self.model = model
        self.tokenizer = tokenizer
        self.decode_step = decode_step
        self.eos_check_every = eos_check_every

    @property
    def is_main(self) -> bool:
        """True on the process that should print (global rank 0, or no process group)."""
        return not dist.is_initialized() or dist.get_rank() == 0

    @property
    def device(self) -> torch.device:
        return self.model.tok_embeddings.weight.device

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
        """Continue each prompt; -> (tokens per row, log-probabilities per row or None)."""
        params = self.model.params
        _check_sampling(temperature, top_p, max_gen_len)
        _check_prompt_tokens(prompt_tokens, self.tokenizer.n_words, params.max_seq_len)
        bsz = len(prompt_tokens)
        if bsz > params.max_batch_size:
            raise ConfigError(
                f"{bsz} prompts exceed max_batch_size={params.max_batch_size}; pass at most that many to "
                "generate, or build with a larger max_batch_size"
            )
        if bsz == 0:
            return [], ([] if logprobs else None)
        state = self._start_decode(prompt_tokens, max_gen_len, logprobs)
        for _ in self._decode_steps(state, temperature, top_p):
            pass
        return _collect(state.tokens.tolist(), state.token_logprobs, prompt_tokens, max_gen_len, self.tokenizer.eos_id, echo)

    def _start_decode(self, prompt_tokens: List[List[int]], max_gen_len: int, logprobs: bool) -> DecodeState:
        """Check the prompts' lengths and lay them out in a (bsz, total_len) buffer of pad_id."""
        params = self.model.params
        bsz = len(prompt_tokens)
        lengths = [len(t) for t in prompt_tokens]
        min_prompt_len, max_prompt_len = min(lengths), max(lengths)
        total_len = min(params.max_seq_len, max_gen_len + max_prompt_len)

        pad_id = self.tokenizer.pad_id
        device = self.device
        tokens = torch.full((bsz, total_len), pad_id, dtype=torch.long, device=device)
        for k, t in enumerate(prompt_tokens):
            tokens[k, : len(t)] = torch.tensor(t, dtype=torch.long, device=device)
        token_logprobs = torch.zeros_like(tokens, dtype=torch.float) if logprobs else None
        eos_reached = torch.zeros(bsz, dtype=torch.bool, device=device)
        input_text_mask = tokens != pad_id
        return DecodeState(tokens, token_logprobs, input_text_mask, eos_reached, min_prompt_len, total_len)

    @torch.inference_mode()
    def _decode_steps(self, state: DecodeState, temperature: float, top_p: float) -> Iterator[int]:
        """Run the decode loop on `state`, yielding each position just written (for all rows at once)."""
        tokens, token_logprobs, input_text_mask = state.tokens, state.token_logprobs, state.input_text_mask
        eos_reached, min_prompt_len, total_len = state.eos_reached, state.min_prompt_len, state.total_len
        pad_id, eos_id = self.tokenizer.pad_id, self.tokenizer.eos_id
        logprobs = token_logprobs is not None
        prev_pos = 0
        if min_prompt_len == total_len:
            logits = self.model.forward(tokens, prev_pos)
            if logprobs:  # the reference scores against the token's own position; use the previous one
                token_logprobs[:, 1:] = _token_logprobs(logits[:, :-1], tokens[:, 1:], pad_id)

        # Running past the step where the last row finished changes nothing that is returned;
        # with sampling it would consume random draws the reference does not, so check every step.
        check_every = self.eos_check_every if temperature == 0 else 1
        all_finite = torch.ones((), dtype=torch.bool, device=tokens.device)
        for cur_pos in range(min_prompt_len, total_len):
            logits = self._forward(tokens[:, prev_pos:cur_pos], prev_pos)
            last_logits = logits[:, -1]
            if temperature > 0:  # multinomial would fail on non-finite probabilities with torch's own words
                _check_finite(torch.isfinite(last_logits).all(), self.model.tok_embeddings.weight.dtype)
            else:  # greedy: no host sync here; checked below, with eos
                all_finite &= torch.isfinite(last_logits).all()
            next_token = _next_token(last_logits, temperature, top_p)
            next_token = torch.where(input_text_mask[:, cur_pos], tokens[:, cur_pos], next_token)
            tokens[:, cur_pos] = next_token
            if logprobs:
                token_logprobs[:, prev_pos + 1 : cur_pos + 1] = _token_logprobs(
                    logits, tokens[:, prev_pos + 1 : cur_pos + 1], pad_id
                )
            eos_reached |= (~input_text_mask[:, cur_pos]) & (next_token == eos_id)
            prev_pos = cur_pos
            check_now = (cur_pos - min_prompt_len + 1) % check_every == 0 or cur_pos + 1 == total_len
            if check_now and temperature == 0:
                _check_finite(all_finite, self.model.tok_embeddings.weight.dtype)
            yield cur_pos
            if check_now and bool(eos_reached.all()):
                break

    def _forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        if self.decode_step is not None and tokens.shape[1] == 1:
            return self.decode_step(tokens, start_pos)
        return self.model.forward(tokens, start_pos)

    def encode_prompts(self, prompts: List[str], max_gen_len: Optional[int]) -> Tuple[List[List[int]], int]:
        """text_completion's prompts -> (token lists starting with bos, max_gen_len with its default)."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, got a single str; wrap it in a list")
        tokens = [self.tokenizer.encode(x, bos=True, eos=False) for x in prompts]
        return tokens, self._gen_len(max_gen_len)

    def encode_dialogs(self, dialogs: List[Dialog], max_gen_len: Optional[int]) -> Tuple[List[List[int]], int]:
        """chat_completion's dialogs -> (token lists in the chat format, max_gen_len with its default)."""
        tokens = [encode_dialog(self.tokenizer, d, i) for i, d in enumerate(dialogs)]
        return tokens, self._gen_len(max_gen_len)

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
                pred["tokens"] = [self.tokenizer.decode(x) for x in t]
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
    ) -> List[ChatPrediction]:
        prompt_tokens, max_gen_len = self.encode_dialogs(dialogs, max_gen_len)
        unsafe = [has_special_tags(d) for d in dialogs]
        tokens, probs = self._generate_in_batches(prompt_tokens, max_gen_len, temperature, top_p, logprobs)
        out: List[ChatPrediction] = []
        for i, t in enumerate(tokens):
            content = UNSAFE_ERROR if unsafe[i] else self.tokenizer.decode(t)
            pred: ChatPrediction = {"generation": {"role": "assistant", "content": content}}
            if logprobs:
                pred["tokens"] = [self.tokenizer.decode(x) for x in t]
                pred["logprobs"] = probs[i]
            out.append(pred)
        return out

    def _generate_in_batches(self, prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo=False):
        """generate() on consecutive groups of at most max_batch_size prompts; results in input order."""
        params = self.model.params
        _check_sampling(temperature, top_p, max_gen_len)  # once, with indices into the whole list
        _check_prompt_tokens(prompt_tokens, self.tokenizer.n_words, params.max_seq_len)
        size = params.max_batch_size
        tokens, probs = [], []
        for start in range(0, len(prompt_tokens), size):
            t, p = self.generate(prompt_tokens[start : start + size], max_gen_len, temperature, top_p, logprobs, echo)
            tokens += t
            probs += p or []
        return tokens, (probs if logprobs else None)


def _load_model(args: ModelArgs, shards, mp_size: int, mp_rank: int, rt: Runtime, quantize=None) -> Transformer:
    """The model with this rank's weights on rt.device in rt.dtype (int8 where quantized).

    Built on the meta device and given the checkpoint's own memory-mapped tensors where no
    conversion is needed (CPU, same dtype): no weight is allocated or copied twice.
    """
    with torch.device("meta"):
        model = Transformer(args)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state = checkpoint.load_rank_state(shards, mp_size, mp_rank)
    source = f"checkpoint {str(shards[0].parent)!r} (rank {mp_rank} of {mp_size})"
    _check_vocab(state, args, mp_size, source)
    checkpoint.check_state(state, expected, source)
    if quantize:
        with torch.device("meta"):
            quant.replace_linears(model)
    int8_layers = quant.int8_layer_names(model)
    placed = {}
    keys = slow_progress(list(state), total=len(state), desc="Loading weights", unit="tensor", enabled=rt.is_main)
    for key in keys:
        # To the device in the stored dtype, then converted there: one tensor in flight at a time.
        tensor = state.pop(key).to(device=rt.device).to(dtype=rt.dtype)
        placed.update(quant.quantize_entry(key, tensor, int8_layers))
    model.load_state_dict(placed, strict=True, assign=True)
    model.setup_caches()
    return model.eval()


def _load_model_or_explain(args: ModelArgs, shards, mp_size: int, mp_rank: int, rt: Runtime, quantize=None) -> Transformer:
    """_load_model, with an allocation failure explained in terms of the sizes the user chose."""
    try:
        return _load_model(args, shards, mp_size, mp_rank, rt, quantize)
    except RuntimeError as exc:  # torch.OutOfMemoryError is one; CPU and MPS raise plain RuntimeError
        text = str(exc).lower()
        if not any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory")):
            raise
        cache = memory.gib(memory.cache_bytes(args, mp_size, rt.dtype))
        raise ConfigError(
            f"out of memory on {rt.device} while loading the model (its KV cache takes {cache} for "
            f"max_batch_size={args.max_batch_size} x max_seq_len={args.max_seq_len}); lower max_seq_len "
            "or max_batch_size, use a smaller --dtype, or spread the model over more processes"
        ) from None


def _check_vocab(state, args: ModelArgs, mp_size: int, source: str) -> None:
    emb = state.get("tok_embeddings.weight")
    if emb is not None and emb.shape[0] != args.vocab_size:
        raise checkpoint.CheckpointError(
            f"{source}: the embedding has {emb.shape[0]} rows but the tokenizer has {args.vocab_size} words; "
            "use the tokenizer.model that came with these weights"
        )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_sampling(temperature: float, top_p: float, max_gen_len: Optional[int]) -> None:
    """Raise ConfigError for sampling settings generate would reject; None max_gen_len means the default."""
    if not _is_number(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}; e.g. 0.6")
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be a number in (0, 1], got {top_p!r}; e.g. 0.9 (1 = no nucleus cut)")
    if max_gen_len is not None:
        _check_gen_len(max_gen_len)


def _check_gen_len(max_gen_len: int) -> None:
    if isinstance(max_gen_len, bool) or not isinstance(max_gen_len, int) or max_gen_len < 0:
        raise ConfigError(f"max_gen_len must be an integer >= 0, got {max_gen_len!r}")


def _check_sampling(temperature: float, top_p: float, max_gen_len: int) -> None:
    check_sampling(temperature, top_p, None)
    _check_gen_len(max_gen_len)


def _check_prompt_tokens(prompt_tokens: Sequence, n_words: int, max_seq_len: int) -> None:
    """Every prompt a non-empty list of token ids of this tokenizer, no longer than max_seq_len."""
    if isinstance(prompt_tokens, (str, bytes)) or not isinstance(prompt_tokens, Sequence):
        raise TypeError(
            f"prompt_tokens must be a list of token-id lists, got {type(prompt_tokens).__name__}; "
            "for text, call text_completion([...])"
        )
    for i, row in enumerate(prompt_tokens):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(
                f"prompt_tokens[{i}] must be a list of token ids, got {type(row).__name__} {row!r:.60}; "
                "encode text with tokenizer.encode(text, bos=True, eos=False), or call text_completion"
            )
        if not row:
            raise ConfigError(f"prompt_tokens[{i}] is empty (0 tokens); encode prompts with bos=True")
        if len(row) > max_seq_len:
            raise ConfigError(
                f"prompt {i} has {len(row)} tokens, more than max_seq_len={max_seq_len}; "
                "shorten the prompt or build with a larger max_seq_len"
            )
        bad = next((t for t in row if isinstance(t, bool) or not isinstance(t, Integral) or not 0 <= t < n_words), None)
        if bad is not None:
            raise ConfigError(
                f"prompt_tokens[{i}] holds {bad!r}, not a token id of this tokenizer (0 .. {n_words - 1}); "
                "encode prompts with the tokenizer that came with the weights"
            )


def _check_finite(all_finite: torch.Tensor, dtype: torch.dtype) -> None:
    """all_finite: a bool tensor, False once any logit was inf or nan. Non-finite logits would make
    sampling fail deep in torch.multinomial (or argmax pick garbage), so say what happened."""
    if bool(all_finite):
        return
    name = str(dtype).replace("torch.", "")
    if dtype == torch.float16:
        fix = "float16 overflowed: run with --dtype bfloat16 or --dtype float32 (Llama.build(dtype=...))"
    else:
        fix = "the checkpoint probably holds inf/nan weights: download it again, or try --dtype float32"
    raise GenerationError(f"the model produced non-finite logits (inf or nan) with {name} weights; {fix}")


def _next_token(last_logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    if temperature > 0:
        probs = torch.softmax(last_logits / temperature, dim=-1)
        next_token = sample_top_p(probs, top_p)
    else:
        next_token = torch.argmax(last_logits, dim=-1)
    return next_token.reshape(-1)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(target_i | logits_i); 0 where the target is padding."""
    return -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none", ignore_index=pad_id)


def _collect(rows, token_logprobs, prompt_tokens, max_gen_len: int, eos_id: int, echo: bool):
    """Cut each row to its generation (or prompt + generation with echo), stopping at the first eos."""
    all_probs = token_logprobs.tolist() if token_logprobs is not None else None
    out_tokens, out_probs = [], []
    for i, toks in enumerate(rows):
        start = 0 if echo else len(prompt_tokens[i])
        end = len(prompt_tokens[i]) + max_gen_len
        toks = toks[start:end]
        probs = all_probs[i][start:end] if all_probs is not None else None
        if eos_id in toks:
            cut = toks.index(eos_id)
            toks = toks[:cut]
            probs = probs[:cut] if probs is not None else None
        out_tokens.append(toks)
        out_probs.append(probs)
    return out_tokens, (out_probs if all_probs is not None else None)


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
