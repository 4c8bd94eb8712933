"""Progress bars for slow steps only: drawn on rank 0, and only once a step has run for a second."""

import sys
from typing import Iterable, Optional

from tqdm import tqdm

DELAY_S = 1.0  # fast loads (tests, the demo) stay silent


def slow_progress(iterable: Iterable, total: Optional[int], desc: str, unit: str = "it", enabled: bool = True):
    """`iterable`, wrapped in a tqdm bar on stderr that appears after DELAY_S and is erased when done."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        delay=DELAY_S,
        leave=False,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
