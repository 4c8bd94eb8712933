"""Speed knobs that depend on the device: how the decode step is compiled, how often EOS is checked."""

import torch


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
