"""The engine's forward calls: B rows of T tokens, each row in its own KV-cache slot from its own
position, through the native step where it runs (llama.decoding.native_step) and llama.model's
forward_rows otherwise. Under model parallelism rank 0 schedules: every call it makes is broadcast
first and repeated by the other ranks (`follow`), so all ranks step in lockstep.
"""

import logging
from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .native_step import NativeDecode

log = logging.getLogger(__name__)

TORCH_PREFILL_CHUNK = 512  # prompt tokens per forward call where llama.model runs the prompt


class RowSteps:
    def __init__(self, model, decode_step=None):
        """model: a llama.model.Transformer with its caches set up; decode_step: the Llama's fast
        step (a NativeDecode is used for rows; anything else is ignored)."""
        self.model = model
        self.native: Optional[NativeDecode] = decode_step if isinstance(decode_step, NativeDecode) else None
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.device = model.tok_embeddings.weight.device

    @property
    def prefill_chunk(self) -> int:
        """Prompt tokens computed per call: what the native step takes at once, else TORCH_PREFILL_CHUNK."""
        return self.native.prompt_rows if self.native is not None and self.native.prompt_rows else TORCH_PREFILL_CHUNK

    def __call__(
        self, tokens: Sequence[Sequence[int]], slots: Sequence[int], positions: Sequence[int], all_logits: bool = False
    ) -> torch.Tensor:
        """Row b's tokens at slot slots[b] from position positions[b] -> float32 logits (B, 1, vocab) of
        each row's last token (B, T, vocab with all_logits); rank 0 only, in lockstep with the others.
        Called under torch.inference_mode() (the engine's thread holds it)."""
        if self.world > 1:
            self._send(("step", [list(t) for t in tokens], list(slots), list(positions), all_logits))
        return self._compute(tokens, slots, positions, all_logits)

    def _compute(self, tokens, slots, positions, all_logits: bool) -> torch.Tensor:
        native = self.native
        if (
            native is not None
            and not all_logits
            and (len(tokens[0]) == 1 or native.takes(len(tokens) * len(tokens[0])))
        ):
            return native.rows(tokens, slots, positions)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        at = torch.tensor(slots, dtype=torch.long, device=self.device)
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)
        return self.model.forward_rows(ids, at, pos, last_only=not all_logits)

    def scan(self, logits: torch.Tensor, greedy: bool) -> Tuple[List[bool], Optional[List[int]]]:
        """logits (B, T, vocab) of a step -> per row whether its last position's are all finite, and (with
        greedy) the index of each row's largest (torch.argmax's); one native call on the CPU."""
        if self.native is not None and logits.device.type == "cpu":
            best = self.native.scan(logits)
            return [b >= 0 for b in best], best if greedy else None
        last = logits[:, -1]
        finite = torch.isfinite(last).all(dim=-1).tolist()
        return finite, last.argmax(dim=-1).tolist() if greedy else None

    def forget(self, slot: int, length: int) -> None:
        """Slot `slot` keeps its cache blocks for positions 0..length-1 only, on every rank."""
        if self.world > 1:
            self._send(("forget", slot, length))
        self.model.kv_pool.truncate(slot, length)

    def idle(self) -> None:
        """Tell the other ranks that rank 0 is still there (they wait for its next step)."""
        if self.world > 1:
            self._send(("idle",))

    def stop(self) -> None:
        """Release the other ranks from `follow`."""
        if self.world > 1:
            self._send(("stop",))

    def follow(self) -> None:
        """On a rank other than 0: repeat rank 0's calls until it stops (or a collective fails)."""
        while True:
            message = self._receive()
            if message[0] == "stop":
                return
            if message[0] == "step":
                with torch.inference_mode():
                    self._compute(*message[1:])
            elif message[0] == "forget":
                self.model.kv_pool.truncate(*message[1:])

    def _send(self, message: Tuple[Any, ...]) -> None:
        dist.broadcast_object_list([message], src=0)

    def _receive(self) -> Tuple[Any, ...]:
        box: list = [None]
        dist.broadcast_object_list(box, src=0)
        return box[0]
