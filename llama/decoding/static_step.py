"""The static-shape one-token decode step, optionally compiled (`Llama.build(..., compile=True)`)."""

from typing import Optional

import torch

from ..kernels import native
from ..model import Transformer


class StaticDecode:
    """The static-shape one-token decode step, optionally under torch.compile (`Llama.build(..., compile=True)`).

    It runs Transformer.forward_static, whose shapes do not depend on the position (it attends
    over the whole, masked, KV cache), so one compiled graph serves every step of every
    generation at a given batch size. The position travels as a tensor on the device, so a step
    needs nothing from the host and can be replayed as a CUDA graph.
    """

    def __init__(self, model: Transformer, compile_options: Optional[dict] = None):
        """compile_options: torch.compile arguments (llama.runtime.device_tuning.compile_options); None runs eagerly."""
        step = model.forward_static
        self.compiled = compile_options is not None
        if self.compiled:
            # Traced once as a constant rather than through its file checks; marked here, not where it is
            # defined, so that only a compiling run imports torch._dynamo (about two seconds).
            torch.compiler.assume_constant_result(native.available)
        self.step = step if compile_options is None else torch.compile(step, **compile_options)
        self.pos = torch.zeros(1, dtype=torch.long, device=model.tok_embeddings.weight.device)
        self.pool = model.kv_pool  # blocks are given out here, outside the compiled step

    def takes_prompt(self, tokens: torch.Tensor) -> bool:
        """Prompts (more than one token per row) are llama.model's."""
        return False

    def __call__(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """tokens (bsz, 1) at start_pos -> float32 logits (bsz, 1, vocab)."""
        # Outside inference mode: compiled code cannot mutate the (normal) cache tensors in it.
        bsz = tokens.shape[0]
        self.pool.ensure(range(bsz), [start_pos + 1] * bsz)
        with torch.inference_mode(False), torch.no_grad():
            self.pos.fill_(start_pos)  # in place, on the device: no host-to-device copy to wait for
            return self.step(tokens.clone(), self.pos)
