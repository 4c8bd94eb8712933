"""Speed knobs that depend on the device: how the decode step is compiled, how often EOS is checked,
and which thread's OpenMP workers a CPU engine runs with."""

import ctypes
import logging
import os

import torch

log = logging.getLogger(__name__)


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


def release_openmp_workers() -> bool:
    """Free the calling thread's OpenMP worker threads (OpenMP 5's omp_pause_resource_all, soft pause),
    before another thread takes over the CPU work. -> whether the OpenMP runtime did.

    OpenMP keeps one pool of worker threads per thread that starts parallel regions. Once the
    thread that built a model (the main one) has a pool and the engine's thread makes its own,
    GNU OpenMP counts more threads than CPUs and its workers stop spinning between regions: every
    region then waits for sleeping threads to wake. A native decode step is ~60 regions; called from
    the engine's thread it ran 1.7x (batch 1) and 1.3x (batch 8) slower than from the main thread
    on a 2-core CPU (BENCHMARKS.md, "Engine: concurrent requests"). The pool comes back on its
    own if the calling thread starts parallel work again. Only an OpenMP runtime already loaded
    (torch's) is used; without one (or without the call) this does nothing.
    """
    for name in ("libgomp.so.1", "libomp.so", "libiomp5.so"):
        try:
            runtime = ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL)
            pause = runtime.omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        released = pause(1) == 0  # omp_pause_soft
        log.debug("OpenMP workers of this thread released (%s): %s", name, released)
        return released
    return False
