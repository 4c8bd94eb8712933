"""The one place that decides the process-group backend, the device and the dtype.

`select()` is a pure decision from the launcher environment, the caller's overrides and what this
torch build and machine can do (a `Probe`), so every rule is testable without the hardware.
`llama.runtime.distributed.init_distributed` then carries it out once per process. This module also
answers questions about the device itself (`device_memory`).

Rules (first match wins):
- a process group the caller already created is used as it is.
- launched by torchrun (RANK and WORLD_SIZE set): CUDA with NCCL -> nccl on cuda:LOCAL_RANK;
  CUDA without NCCL (Windows builds) -> gloo on cuda:LOCAL_RANK; no CUDA -> gloo on CPU.
- no launcher: a private single-rank gloo group on an in-process store (no MASTER_ADDR, no
  port, no TCP store), on CUDA, else Apple MPS, else CPU.
- dtype: bf16 on CUDA where supported, else fp16; fp16 on MPS; fp32 on CPU.
Overrides: arguments, else env LLAMA_DEVICE / LLAMA_BACKEND / LLAMA_DTYPE.
Timeouts (see llama.runtime.distributed): env LLAMA_COLLECTIVE_TIMEOUT / LLAMA_LOAD_TIMEOUT, in seconds.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any, Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist

from ..errors import BackendError, ConfigError
from .choices import DEVICE_CHOICES
from .envvars import env_int, env_seconds
from .group import caller_group

# The devices a user may name (--device, LLAMA_DEVICE), as they are written.
_DEVICE_TYPES = tuple(d for d in DEVICE_CHOICES if ":" not in d)
_DEVICE_HINT = ", ".join(DEVICE_CHOICES[:-1]) + " or " + DEVICE_CHOICES[-1]  # "cpu, cuda, cuda:N or mps"

BACKENDS = ("nccl", "gloo")
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
# Defaults; env LLAMA_COLLECTIVE_TIMEOUT / LLAMA_LOAD_TIMEOUT (seconds) override them per run.
COLLECTIVE_TIMEOUT = timedelta(seconds=30)
LOAD_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Probe:
    """What this torch build, machine and process offer."""

    cuda_count: int
    nccl: bool
    mps: bool
    cuda_bf16: bool = False
    group: Optional[Tuple[str, int, int]] = None  # (backend, rank, world size) of an existing group

    @property
    def cuda(self) -> bool:
        return self.cuda_count > 0

    @classmethod
    def detect(cls) -> "Probe":
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mps_backend = getattr(torch.backends, "mps", None)
        return cls(
            cuda_count=cuda_count,
            nccl=dist.is_available() and dist.is_nccl_available(),
            mps=bool(mps_backend and mps_backend.is_available()),
            cuda_bf16=cuda_count > 0 and torch.cuda.is_bf16_supported(),
            group=caller_group(),
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
    timeout: timedelta = COLLECTIVE_TIMEOUT
    load_timeout: timedelta = LOAD_TIMEOUT

    def describe(self) -> str:
        dtype = str(self.dtype).replace("torch.", "")
        return (
            f"backend={self.backend} device={self.device} dtype={dtype} world_size={self.world_size} "
            f"rank={self.rank} ({self.reason})"
        )


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)"
        ) from None


def _launch(env: Mapping[str, str], probe: Probe) -> Tuple[bool, int, int, int]:
    """-> (launched, world_size, rank, local_rank) from the launcher env or an existing group."""
    local_rank = env_int("LOCAL_RANK", 0, env)
    if probe.group is not None:
        _, rank, world = probe.group
        return True, world, rank, local_rank
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return False, 1, 0, 0
    world, rank = env_int("WORLD_SIZE", 1, env), env_int("RANK", 0, env)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank <= rank:
        raise ConfigError(
            f"inconsistent launcher environment: RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world}; "
            "start the script with torchrun, or unset these variables for a single process"
        )
    return True, world, rank, local_rank


def _auto_device(probe: Probe, world_size: int, local_rank: int) -> Tuple[torch.device, str]:
    if probe.cuda:
        if local_rank >= probe.cuda_count:
            raise BackendError(
                f"LOCAL_RANK={local_rank} needs GPU cuda:{local_rank}, but this machine has {probe.cuda_count}; "
                f"launch at most {probe.cuda_count} processes per node (--nproc_per_node), or use device cpu"
            )
        return torch.device("cuda", local_rank), f"CUDA -> cuda:{local_rank}"
    if probe.mps and world_size == 1:
        return torch.device("mps"), "Apple MPS -> mps"
    if probe.mps:
        return torch.device("cpu"), f"MPS serves one process, {world_size} were launched -> cpu"
    return torch.device("cpu"), "no CUDA or MPS -> cpu"


def _requested_device(value, source: str, probe: Probe, world_size: int, local_rank: int) -> torch.device:
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {value!r} (from {source}); use {_DEVICE_HINT}") from None
    if dev.type not in _DEVICE_TYPES:
        raise ConfigError(f"unsupported device {value!r} (from {source}); use {_DEVICE_HINT}")
    if dev.type == "cuda" and not probe.cuda:
        raise BackendError(
            f"device {value!r} (from {source}) requested, but CUDA is not available in this torch build "
            "or on this machine; use device cpu (or mps on Apple silicon)"
        )
    if dev.type == "mps" and not probe.mps:
        raise BackendError(
            f"device {value!r} (from {source}) requested, but Apple MPS is not available here; use device cpu"
        )
    if dev.type == "mps" and world_size > 1:
        raise BackendError(
            f"device 'mps' (from {source}) runs one process, but {world_size} were launched; run without "
            "torchrun, or use device cpu for a multi-process run over gloo"
        )
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        if dev.index >= probe.cuda_count:
            raise BackendError(
                f"device {str(dev)!r} (from {source}) does not exist: this machine has {probe.cuda_count} GPUs "
                f"(cuda:0 .. cuda:{probe.cuda_count - 1})"
            )
    return dev


def _auto_dtype(device: torch.device, probe: Probe) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if probe.cuda_bf16 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def _auto_backend(device: torch.device, probe: Probe, launched: bool) -> Tuple[str, str]:
    if probe.group is not None:
        return probe.group[0], f"process group {probe.group[0]} already initialized by the caller"
    if not launched:
        return "gloo", "one process, no launcher -> private single-rank gloo group (no TCP store)"
    if device.type == "cuda":
        if probe.nccl:
            return "nccl", "CUDA with NCCL -> nccl"
        return "gloo", "NCCL is not available in this torch build -> gloo"
    if probe.cuda:
        return "gloo", f"device {device.type}, not CUDA -> gloo"
    return "gloo", "no CUDA -> gloo"


def _requested_backend(value: str, source: str, device: torch.device, probe: Probe) -> str:
    name = str(value).lower()
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {value!r} (from {source}); use one of {', '.join(BACKENDS)}")
    if probe.group is not None and probe.group[0] != name:
        raise BackendError(
            f"backend {name!r} (from {source}) requested, but this process already has a {probe.group[0]} "
            "process group; leave the backend unset"
        )
    if name == "nccl" and not probe.nccl:
        raise BackendError(
            f"backend 'nccl' (from {source}) is not available: this torch build has no NCCL (macOS and "
            "Windows builds never do); use backend gloo, or leave it unset"
        )
    if name == "nccl" and device.type != "cuda":
        raise BackendError(
            f"backend 'nccl' (from {source}) only moves CUDA tensors, but the device is {device}; "
            "use backend gloo, or leave it unset"
        )
    return name


def _override(value: Any, env: Mapping[str, str], var: str, arg: str) -> Tuple[Any, str, str]:
    """-> (value, where it came from, how the log line shows it); the argument beats the env var."""
    if value is not None:
        return value, f"{arg} argument", f"{arg}={str(value)!r}"
    value = env.get(var) or None
    return value, var, f"{var}={value}"


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
    launched, world, rank, local_rank = _launch(env, probe)
    device, device_src, device_label = _override(device, env, "LLAMA_DEVICE", "device")
    dtype, _, _ = _override(dtype, env, "LLAMA_DTYPE", "dtype")
    backend, backend_src, backend_label = _override(backend, env, "LLAMA_BACKEND", "backend")

    if device is None:
        dev, device_why = _auto_device(probe, world, local_rank)
    else:
        dev, device_why = _requested_device(device, device_src, probe, world, local_rank), device_label
    chosen_dtype = parse_dtype(dtype) or _auto_dtype(dev, probe)
    if chosen_dtype == torch.bfloat16 and dev.type == "cuda" and not probe.cuda_bf16:
        raise BackendError("bfloat16 requested but this GPU does not support it; use dtype float16")
    if backend is None:
        name, backend_why = _auto_backend(dev, probe, launched)
    else:
        name, backend_why = _requested_backend(backend, backend_src, dev, probe), backend_label
    return Runtime(
        name,
        dev,
        chosen_dtype,
        world,
        rank,
        local_rank,
        launched,
        f"{device_why}; {backend_why}",
        timeout=env_seconds("LLAMA_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT, env),
        load_timeout=env_seconds("LLAMA_LOAD_TIMEOUT", LOAD_TIMEOUT, env),
    )


# torch's int4 GPU kernels (tinygemm on CUDA, a Metal shader on MPS): the activation and scale dtype
# each reads (CUDA's takes bfloat16 only; MPS's any float, and float16 is what every Mac with MPS
# runs, where bfloat16 needs macOS 14); tinygemm's mma instructions need Ampere or newer.
INT4_GPU_DTYPES = {"cuda": torch.bfloat16, "mps": torch.float16}
CUDA_INT4_CAPABILITY = (8, 0)


def int4_gpu_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype torch's int4 GPU kernel computes in on `device`'s type; None where it has none."""
    return INT4_GPU_DTYPES.get(torch.device(device).type)


def int4_gpu_generation_ok(device: torch.device) -> bool:
    """False for a CUDA GPU older than the int4 kernel needs (compute capability 8.0)."""
    device = torch.device(device)
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= CUDA_INT4_CAPABILITY


@lru_cache(maxsize=None)
def cpu_vendor() -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD, ...) from /proc/cpuinfo; "" where it cannot be told."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def device_has_kernel(op: str, device: torch.device) -> bool:
    """Whether this torch build has a kernel for `aten::op` on `device`'s type (CPU, CUDA, MPS)."""
    key = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", key)


def device_memory(device: torch.device) -> Optional[int]:
    """Total memory of `device` in bytes, or None where it cannot be told."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "mps":
            return torch.mps.recommended_max_memory()
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):  # e.g. no sysconf on Windows
        return None
