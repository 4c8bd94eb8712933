"""What `Llama.build` does (llama.generation): check the arguments, decide the runtime
(llama.runtime.backend), open the checkpoint, join the process groups, load this rank's share
(llama.weights.loading) and pick the one-token step (native, compiled or llama.model's)."""

import logging
import time
from typing import Any, Optional, Tuple

import torch

from .decoding import native_step
from .decoding.static_step import StaticDecode
from .errors import ConfigError
from .kernels.formats import check_method
from .kv_cache import KV_DTYPES
from .layers.parallel import init_model_parallel, model_parallel_group, model_parallel_rank
from .model import Transformer
from .runtime import memory
from .runtime.backend import Runtime, select
from .runtime.device_tuning import compile_options, eos_check_interval
from .runtime.distributed import barrier_then_tighten_timeouts, init_distributed
from .runtime.group import is_main_process
from .runtime.ranks import on_all_ranks
from .tokenizer import Tokenizer
from .validation import whole_number
from .weights import loading, meta, tokenizer_files
from .weights.model_args import model_args

logger = logging.getLogger("llama.generation")  # the name these lines have always had


def assemble(
    ckpt_dir: str,
    tokenizer_path: Optional[str],
    max_seq_len: int,
    max_batch_size: int,
    model_parallel_size: Optional[int],
    seed: int,
    device,
    dtype,
    backend: Optional[str],
    compile: bool,
    quantize: Optional[str],
    kv_cache_tokens: Optional[int],
    kv_cache_dtype: Optional[str],
) -> Tuple[Transformer, Tokenizer, Any, int]:
    """Llama.build's arguments -> (model, tokenizer, decode step, EOS check interval): Llama's own."""
    whole_number("max_seq_len", max_seq_len)
    whole_number("max_batch_size", max_batch_size)
    whole_number("seed", seed, minimum=None)
    if kv_cache_tokens is not None:
        whole_number("kv_cache_tokens", kv_cache_tokens)
    if kv_cache_dtype is not None and kv_cache_dtype not in KV_DTYPES:
        raise ConfigError(
            f"unknown kv_cache_dtype {kv_cache_dtype!r}; use one of {', '.join(KV_DTYPES)} (or leave it "
            "unset: the model's dtype)"
        )
    check_method(quantize)
    start_time = time.time()
    ckpt = loading.open_checkpoint(ckpt_dir)
    tokenizer = Tokenizer(model_path=tokenizer_files.find_tokenizer(ckpt_dir, tokenizer_path))
    args = model_args(ckpt, tokenizer, max_seq_len, max_batch_size)
    args.kv_cache_tokens, args.kv_cache_dtype = kv_cache_tokens, kv_cache_dtype

    rt = select(device=device, dtype=dtype, backend=backend)
    mp_size = _model_parallel_size(rt, model_parallel_size)
    # Before any process joins the group: every rank fails alike, and none leaves mid-rendezvous.
    meta.check_parallelism(ckpt.n_shards, mp_size, args.n_heads, args.kv_heads)
    memory.check_fits(args, mp_size, rt.device, rt.dtype)
    if is_main_process():
        logger.info(memory.describe_pool(args, mp_size, rt.dtype))
    init_distributed(rt)
    init_model_parallel(mp_size)
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
    if is_main_process():  # quantize: also what a checkpoint is stored in
        logger.info("runtime: %s", _describe(rt, quantize or ckpt.stored, decode_step))
    return model, tokenizer, decode_step, eos_check_interval(rt.device)


def _model_parallel_size(rt: Runtime, requested: Optional[int]) -> int:
    """The reference's default (every process) or the requested size, which must divide the processes."""
    size = rt.world_size if requested is None else whole_number("model_parallel_size", requested)
    if rt.world_size % size:
        raise ConfigError(f"model_parallel_size={size} must divide the number of processes ({rt.world_size})")
    return size


def _describe(rt: Runtime, quantize: Optional[str], decode_step: Any = None) -> str:
    """The `runtime:` line: backend, device, dtype and why; the weight format; how one-token steps run."""
    if isinstance(decode_step, native_step.NativeDecode):
        path = "native"  # llama.decoding.native_step: one call of forward.c per step
    else:
        path = "compiled" if isinstance(decode_step, StaticDecode) else "eager"
    return rt.describe() + (f" quantize={quantize}" if quantize else "") + f" decode={path}"
