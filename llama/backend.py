"""The one place that decides the process-group backend, the device and the dtype.

`select()` is a pure decision from the launcher environment, the user's overrides and what this
torch build can do (a `Probe`), so every rule is testable without the hardware. `init_distributed`
then carries it out once per process.

Rules (first match wins):
- launched by torchrun (RANK/WORLD_SIZE set): CUDA with NCCL -> nccl on cuda:LOCAL_RANK;
  CUDA without NCCL (Windows builds) -> gloo on cuda:LOCAL_RANK; no CUDA -> gloo on CPU.
- no launcher: a private single-rank group on an in-process store (no MASTER_ADDR, no port,
  no TCP store), on CUDA, else MPS, else CPU.
- dtype: bf16 on CUDA where supported, else fp16; fp16 on MPS; fp32 on CPU.
Overrides: arguments, else env LLAMA_DEVICE / LLAMA_BACKEND / LLAMA_DTYPE.
"""
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional, Union

import torch
import torch.distributed as dist

from .errors import BackendError, ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("nccl", "gloo")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# How long a rank waits in a collective before giving up; a dead peer must not hang the others.
COLLECTIVE_TIMEOUT = timedelta(seconds=int(os.environ.get("LLAMA_COLLECTIVE_TIMEOUT", "60")))


@dataclass(frozen=True)
class Probe:
    """What this torch build and machine can do."""

    cuda: bool
    nccl: bool
    mps: bool
    cuda_bf16: bool

    @classmethod
    def detect(cls) -> "Probe":
        cuda = torch.cuda.is_available()
        mps_backend = getattr(torch.backends, "mps", None)
        return cls(
            cuda=cuda,
            nccl=dist.is_available() and dist.is_nccl_available(),
            mps=bool(mps_backend and mps_backend.is_available()),
            cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        )


@dataclass(frozen=True)
class Runtime:
    """Where and how this process runs."""

    backend: str
    device: torch.device
    dtype: torch.dtype
    world_size: int
    rank: int
    local_rank: int
    launched: bool  # started by a launcher (torchrun) rather than as a plain process
    reason: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (
            f"backend={self.backend} device={self.device} dtype={dtype} world_size={self.world_size} "
            f"rank={self.rank} ({self.reason})"
        )


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)"
        ) from None


def _parse_device(device: Union[str, torch.device], probe: Probe, world_size: int) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not probe.cuda:
        raise BackendError(f"device {device!r} requested but CUDA is not available in this torch build/machine; use --device cpu")
    if dev.type == "mps" and not probe.mps:
        raise BackendError(f"device {device!r} requested but Apple MPS is not available here; use --device cpu")
    if dev.type == "mps" and world_size > 1:
        raise BackendError(
            f"MPS runs a single process, but {world_size} were launched; run without torchrun, "
            "or use --device cpu for a multi-process run over gloo"
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return dev


def _auto_device(probe: Probe, world_size: int, local_rank: int) -> torch.device:
    if probe.cuda:
        return torch.device("cuda", local_rank)
    if probe.mps and world_size == 1:
        return torch.device("mps")
    return torch.device("cpu")


def _auto_dtype(device: torch.device, probe: Probe) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if probe.cuda_bf16 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _pick_backend(requested: Optional[str], device: torch.device, probe: Probe, launched: bool):
    """-> (backend, reason)."""
    if requested is not None:
        requested = requested.lower()
        if requested not in BACKENDS:
            raise ConfigError(f"unknown backend {requested!r}; use one of {', '.join(BACKENDS)}")
        if requested == "nccl" and not (probe.nccl and device.type == "cuda"):
            why = "this torch build has no NCCL" if not probe.nccl else f"the device is {device}, not CUDA"
            raise BackendError(f"backend 'nccl' requested but {why}; use --backend gloo (or leave it unset)")
        return requested, "requested"
    if not launched:
        return "gloo", "single process, no launcher: private in-process group"
    if device.type == "cuda":
        if probe.nccl:
            return "nccl", "CUDA with NCCL"
        return "gloo", "NCCL is not available in this torch build -> gloo"
    return "gloo", f"no CUDA, device {device.type} -> gloo"


def select(
    device: Union[None, str, torch.device] = None,
    dtype: Union[None, str, torch.dtype] = None,
    backend: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    probe: Optional[Probe] = None,
) -> Runtime:
    """Decide backend, device and dtype for this process. Pure: no side effects."""
    env = os.environ if env is None else env
    probe = Probe.detect() if probe is None else probe
    launched = "RANK" in env and "WORLD_SIZE" in env
    world_size = _int_env(env, "WORLD_SIZE", 1) if launched else 1
    rank = _int_env(env, "RANK", 0) if launched else 0
    local_rank = _int_env(env, "LOCAL_RANK", 0) if launched else 0
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"inconsistent launcher environment: RANK={rank} WORLD_SIZE={world_size}")

    device = device if device is not None else (env.get("LLAMA_DEVICE") or None)
    dtype = dtype if dtype is not None else (env.get("LLAMA_DTYPE") or None)
    backend = backend if backend is not None else (env.get("LLAMA_BACKEND") or None)

    if device is None:
        dev = _auto_device(probe, world_size, local_rank)
    else:
        dev = _parse_device(device, probe, world_size)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
    chosen_dtype = parse_dtype(dtype) or _auto_dtype(dev, probe)
    if chosen_dtype == torch.bfloat16 and dev.type == "cuda" and not probe.cuda_bf16:
        raise BackendError("bfloat16 requested but this GPU does not support it; use --dtype float16")
    name, reason = _pick_backend(backend, dev, probe, launched)
    return Runtime(name, dev, chosen_dtype, world_size, rank, local_rank, launched, reason)


def init_distributed(rt: Runtime) -> None:
    """Create the default process group for `rt` unless one exists. Idempotent."""
    if dist.is_initialized():
        return
    if rt.device.type == "cuda":
        torch.cuda.set_device(rt.device)
    if not rt.launched:
        # An in-process store: no MASTER_ADDR, no free port, no TCP store (which needs libuv
        # on Windows builds).
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return
    dist.init_process_group(rt.backend, rank=rt.rank, world_size=rt.world_size, timeout=COLLECTIVE_TIMEOUT)


def compile_options(device: torch.device) -> dict:
    """torch.compile arguments for the one-token decode step on `device`.

    On CUDA the step is also captured as a CUDA graph ("reduce-overhead"): at batch 1 a decode
    step is a few hundred small kernels, and launching them one by one from Python, not the
    GPU's memory bandwidth, is what limits the reference.
    """
    mode = "reduce-overhead" if device.type == "cuda" else None
    return dict(mode=mode, fullgraph=True, dynamic=False)


def eos_check_interval(device: torch.device) -> int:
    """Decode steps between host-side checks of "has every row finished?" (greedy decoding only).

    Reading a flag back from an accelerator waits for all queued work, so the host cannot queue
    the next step while the device runs this one; on the CPU the check costs nothing.
    """
    return 1 if device.type == "cpu" else 16
