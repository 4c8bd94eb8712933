"""The engine's view of the KV cache: a fixed number of slots (the cache's batch rows), each holding
the keys and values of one token sequence at positions 0..len-1.

A finished sequence's slot keeps its tokens until the slot is needed again: a new prompt that
begins with them (the dialog so far, a shared system prompt) takes that slot and computes only the
rest (the prompt cache). With no such prefix the least recently used free slot goes first. This
is all the engine knows of the cache's layout: which slot a sequence is in and how many of its
tokens are already there.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple


@dataclass
class Slot:
    index: int
    tokens: List[int] = field(default_factory=list)  # held in the cache at positions 0..len-1
    busy: bool = False
    last_used: int = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class SlotTable:
    def __init__(self, n_slots: int):
        self.slots = [Slot(i) for i in range(n_slots)]
        self._clock = 0

    def free(self) -> int:
        return sum(not s.busy for s in self.slots)

    def acquire(self, prompt: Sequence[int], reuse: bool = True) -> Optional[Tuple[int, int]]:
        """A free slot for `prompt` -> (slot index, prompt tokens already in it), or None if all are busy.

        The free slot holding the longest prefix of the prompt (reuse=True) if that is at least
        half the prompt; else an empty slot, else the least recently used (a short shared start,
        such as bos alone, is not worth another sequence's whole cache). At least the prompt's
        last token is always computed again (its logits choose the first new token)."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        shared = {s.index: common_prefix(s.tokens, prompt) if reuse else 0 for s in free}
        slot = max(free, key=lambda s: (shared[s.index], -s.last_used))
        if 2 * shared[slot.index] < len(prompt):
            slot = min(free, key=lambda s: (len(s.tokens) > 0, s.last_used))
        kept = min(shared[slot.index], len(prompt) - 1)
        del slot.tokens[kept:]
        slot.busy = True
        return slot.index, kept

    def extend(self, index: int, tokens: Sequence[int]) -> None:
        """These tokens' keys and values are now in the slot, after the ones it held."""
        self.slots[index].tokens.extend(tokens)

    def idle_holding(self) -> Optional[int]:
        """The least recently used free slot that still holds tokens (the prompt cache's), or None."""
        idle = [s for s in self.slots if not s.busy and s.tokens]
        return min(idle, key=lambda s: s.last_used).index if idle else None

    def length(self, index: int) -> int:
        return len(self.slots[index].tokens)

    def release(self, index: int, keep: bool = True) -> None:
        """The slot's sequence is done; keep=False forgets what it holds (e.g. after a failed step)."""
        slot = self.slots[index]
        self._clock += 1
        slot.busy, slot.last_used = False, self._clock
        if not keep:
            slot.tokens.clear()
