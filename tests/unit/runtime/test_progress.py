"""Progress bars appear only for slow loads, and only on rank 0."""

import time

import pytest

from llama.runtime.progress import DELAY_S, slow_progress


def test_fast_loads_draw_no_bar(build, capsys):
    build("mha")
    assert "Loading weights" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_slow_step_draws_a_bar_on_rank_0_only(capsys):
    for _ in slow_progress(range(4), total=4, desc="Loading weights", unit="tensor"):
        time.sleep(DELAY_S * 0.4)
    assert "Loading weights" in capsys.readouterr().err
    for _ in slow_progress(range(4), total=4, desc="Loading weights", unit="tensor", enabled=False):
        time.sleep(DELAY_S * 0.4)
    assert capsys.readouterr().err == ""
