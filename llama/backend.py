"""The one place that decides the process-group backend, the device and the dtype.

`select()` is a pure decision from the launcher environment, the caller's overrides and what this
torch build and machine can do (a `Probe`), so every rule is testable without the hardware.
`init_distributed` then carries it out once per process.

Rules (first match wins):
- a process group the caller already created is used as it is.
- launched by torchrun (RANK and WORLD_SIZE set): CUDA with NCCL -> nccl on cuda:LOCAL_RANK;
  CUDA without NCCL (Windows builds) -> gloo on cuda:LOCAL_RANK; no CUDA -> gloo on CPU.
- no launcher: a private single-rank gloo group on an in-process store (no MASTER_ADDR, no
  port, no TCP store), on CUDA, else Apple MPS, else CPU.
- dtype: bf16 on CUDA where supported, else fp16; fp16 on MPS; fp32 on CPU.
Overrides: arguments, else env LLAMA_DEVICE / LLAMA_BACKEND / LLAMA_DTYPE.

Timeouts: joining and loading may take long and unevenly (LOAD_TIMEOUT); once every rank has
loaded, a model-parallel collective that waits longer than COLLECTIVE_TIMEOUT means a peer died
or hung, and the rank gives up instead of waiting forever.
"""
import atexit
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional, Tuple, Union

import torch
import torch.distributed as dist
from fairscale.nn.model_parallel import initialize as fs_init

from .errors import BackendError, ConfigError

logger = logging.getLogger(__name__)

BACKENDS = ("nccl", "gloo")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# Defaults; env LLAMA_COLLECTIVE_TIMEOUT / LLAMA_LOAD_TIMEOUT (seconds) override them per run.
COLLECTIVE_TIMEOUT = timedelta(seconds=30)
LOAD_TIMEOUT = timedelta(minutes=30)
_made_here = False  # whether init_distributed created this process's group (then it is ours, not the caller's)


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
        group = None
        if dist.is_available() and dist.is_initialized() and not _made_here:
            group = (str(dist.get_backend()), dist.get_rank(), dist.get_world_size())
        return cls(
            cuda_count=cuda_count,
            nccl=dist.is_available() and dist.is_nccl_available(),
            mps=bool(mps_backend and mps_backend.is_available()),
            cuda_bf16=cuda_count > 0 and torch.cuda.is_bf16_supported(),
            group=group,
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


def _seconds_env(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    value = env.get(name, "")
    if value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 10**7:  # also rejects nan and inf
        raise ConfigError(f"environment variable {name}={value!r} must be a number of seconds > 0, e.g. {name}=60")
    return timedelta(seconds=seconds)


def parse_dtype(dtype: Union[None, str, torch.dtype]) -> Optional[torch.dtype]:
    if dtype is None or dtype in DTYPES.values():
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)"
        ) from None


def _launch(env: Mapping[str, str], probe: Probe) -> Tuple[bool, int, int, int]:
    """-> (launched, world_size, rank, local_rank) from the launcher env or an existing group."""
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    if probe.group is not None:
        _, rank, world = probe.group
        return True, world, rank, local_rank
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return False, 1, 0, 0
    world, rank = _int_env(env, "WORLD_SIZE", 1), _int_env(env, "RANK", 0)
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
        raise ConfigError(f"unknown device {value!r} (from {source}); use cpu, cuda, cuda:N or mps") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {value!r} (from {source}); use cpu, cuda, cuda:N or mps")
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


def _override(value, env: Mapping[str, str], var: str, arg: str) -> Tuple[Optional[object], str, str]:
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
        name, dev, chosen_dtype, world, rank, local_rank, launched, f"{device_why}; {backend_why}",
        timeout=_seconds_env(env, "LLAMA_COLLECTIVE_TIMEOUT", COLLECTIVE_TIMEOUT),
        load_timeout=_seconds_env(env, "LLAMA_LOAD_TIMEOUT", LOAD_TIMEOUT),
    )


def init_distributed(rt: Runtime) -> None:
    """Create the default process group for `rt` unless one exists. Idempotent."""
    global _made_here
    if dist.is_initialized():
        return
    if rt.device.type == "cuda":
        torch.cuda.set_device(rt.device)
    if not rt.launched:
        # An in-process store: no MASTER_ADDR, no free port, and no TCP store, which Windows
        # builds without libuv cannot open.
        dist.init_process_group(rt.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=rt.load_timeout)
    else:
        if os.name == "nt":
            # torch 2.4-2.6 default the TCP store to libuv, which Windows builds lack.
            os.environ.setdefault("USE_LIBUV", "0")
        # Loading can take long and unevenly, so joining uses the generous load timeout;
        # `loaded` tightens the model-parallel collectives afterwards.
        dist.init_process_group(rt.backend, rank=rt.rank, world_size=rt.world_size, timeout=rt.load_timeout)
    _made_here = True
    atexit.register(_shutdown)


def _shutdown() -> None:
    # Tearing the group down before the interpreter exits stops gloo's threads from being
    # destroyed mid-flight (which aborts the process with "terminate called ...").
    if dist.is_initialized():
        dist.destroy_process_group()


def loaded(rt: Runtime) -> None:
    """Call on every rank once its weights are loaded.

    Waits (up to the load timeout) for the slowest rank, then bounds each model-parallel
    collective by the collective timeout: every rank runs the same steps in lockstep from here,
    so a longer wait means a peer died or hung, and this rank should fail rather than hang.
    The default group keeps the long timeout for the caller's own coordination.
    """
    if rt.world_size == 1 or not dist.is_initialized():
        return
    dist.barrier()
    set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)  # torch >= 2.3
    if set_timeout is None or not fs_init.model_parallel_is_initialized():
        logger.debug("model-parallel collectives keep torch's default timeout")
        return
    set_timeout(rt.timeout, fs_init.get_model_parallel_group())


# How gloo and NCCL word a collective that failed because a peer process exited ...
_PEER_EXITED = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
                "NCCL communicator was aborted")
# ... or stopped answering (hung, or its machine vanished) for longer than the timeout.
_PEER_SILENT = ("Timed out waiting", "timed out", "Socket Timeout")


def peer_exited(exc: BaseException) -> bool:
    """True if `exc` is a collective failing because another rank's process went away."""
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _PEER_EXITED)


def peer_failure(exc: BaseException) -> Optional[str]:
    """If `exc` is a collective failing because another rank died or hung, say so in one line."""
    text = str(exc).strip()
    if not isinstance(exc, RuntimeError) or not any(m in text for m in _PEER_EXITED + _PEER_SILENT):
        return None
    detail = text.splitlines()[0]
    if detail.startswith("[") and "] " in detail:  # drop gloo's "[/path/to/pair.cc:553] " prefix
        detail = detail.split("] ", 1)[1]
    detail = detail.split(". ")[0].rstrip(".")
    if peer_exited(exc):
        return (
            f"lost contact with another rank ({detail}); the rank that failed prints its own error, "
            "and torchrun's failure report names it (Root Cause)"
        )
    return (
        f"another rank stopped answering ({detail}): it hung, or its machine or network went away; "
        "if it is only slow, raise LLAMA_COLLECTIVE_TIMEOUT or LLAMA_LOAD_TIMEOUT (seconds)"
    )


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
