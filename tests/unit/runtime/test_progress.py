"""Progress appears only for slow steps, only on rank 0: a bar on a terminal, one note line elsewhere."""

import io
import logging
import re
import sys
import time

import pytest

from llama.cli.convert import convert
from llama.cli.quantize import quantize_checkpoint
from llama.runtime import progress
from llama.runtime.progress import DELAY_S, Progress, slow_progress

NOTE = "Loading weights ...\n"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_fast_loads_draw_no_bar(build, capsys):
    build("mha")
    assert "Loading weights" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_slow_step_draws_a_bar_on_rank_0_only(capsys):
    for _ in slow_progress(range(4), total=4, desc="Loading weights", unit="tensor"):
        time.sleep(DELAY_S * 0.4)
    assert capsys.readouterr().err == NOTE
    for _ in slow_progress(range(4), total=4, desc="Loading weights", unit="tensor", enabled=False):
        time.sleep(DELAY_S * 0.4)
    assert capsys.readouterr().err == ""


@pytest.fixture
def no_delay(monkeypatch):
    """Every step counts as slow: the notes of tiny models' steps can be seen."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)


def test_off_a_terminal_a_step_is_one_whole_line_that_log_lines_never_split(no_delay, capsys):
    logger = logging.getLogger("test_progress")
    logger.addHandler(handler := logging.StreamHandler(sys.stderr))
    try:
        with Progress("quantizing consolidated.00.pth to int4", 3, "tensor") as bar:
            logger.warning("wrote consolidated.00.pth")
            bar.update(3)
    finally:
        logger.removeHandler(handler)
    captured = capsys.readouterr()
    assert sorted(captured.err.splitlines(keepends=True)) == [
        "quantizing consolidated.00.pth to int4 ...\n",
        "wrote consolidated.00.pth\n",
    ]
    assert captured.out == ""


def test_on_a_terminal_the_bar_is_redrawn_during_one_long_call_and_then_erased(monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0.05)
    monkeypatch.setattr(progress, "REDRAW_S", 0.05)
    terminal = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    with Progress("writing", 2, "shard") as bar:
        bar.update()
        time.sleep(0.5)  # one blocking call: no update, yet the elapsed time moves on
    drawn = terminal.getvalue()
    assert drawn.count("\rwriting:  50%|") >= 2, drawn
    assert "1/2 [00:00<" in drawn
    assert drawn.endswith("\r\x1b[K")


def test_other_ranks_and_fast_steps_print_nothing(no_delay, capsys, monkeypatch):
    monkeypatch.setattr(progress, "is_main_process", lambda: False)  # as on rank 1 (llama.runtime.group)
    with Progress("Loading weights"):
        pass
    monkeypatch.setattr(progress, "DELAY_S", 60.0)
    with Progress("Loading weights", enabled=True):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("layout", ["meta", "hf", "int4"])
def test_loading_notes_its_progress_off_a_terminal_and_stdout_keeps_its_one_line(
    build, make_ckpt, tokenizer_path, tmp_path, no_delay, capsys, layout
):
    from llama import Llama

    ckpt = make_ckpt("mha")
    if layout == "hf":
        ckpt = convert(ckpt, tmp_path / "hf")
    elif layout == "int4":  # a pre-quantized folder: its layers are repacked as it loads
        ckpt = tmp_path / "q"
        quantize_checkpoint(make_ckpt("mha"), ckpt, layout)
    capsys.readouterr()
    Llama.build(str(ckpt), str(tokenizer_path), 64, 4, device="cpu", dtype="float32")
    captured = capsys.readouterr()
    assert captured.err == NOTE
    assert re.fullmatch(r"Loaded in \d+\.\d\d seconds\n", captured.out)
