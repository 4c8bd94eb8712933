"""llama.frontend: what the example scripts and the chat do around generation (threads, the
--compile notice, the summary line), and llama.distributed's rule for who speaks."""

import logging

import pytest
import torch

from llama import demo
from llama.cli.frontend import (
    SEPARATOR,
    build_generator,
    check_gen_len,
    complete,
    log_summary,
    note_clipped,
    use_one_thread_for_the_demo,
)
from llama.decoding import native_step as native_decode
from llama.decoding.batches import Timings
from llama.decoding.native_step import NativeDecode
from llama.errors import ConfigError
from llama.runtime import distributed, group
from llama.runtime.envvars import env_int


@pytest.fixture
def thread_counts_set(monkeypatch):
    """Every torch.set_num_threads(n) call, recorded instead of made."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    return calls


def test_resolving_the_demo_leaves_the_thread_count_alone(thread_counts_set, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert demo.resolve(None, None) == (str(demo.CKPT_DIR), str(demo.TOKENIZER_PATH))
    assert thread_counts_set == []


def test_the_front_end_runs_the_demo_on_one_thread_and_says_so(thread_counts_set, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="llama.cli.frontend")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    use_one_thread_for_the_demo()  # the user's choice wins
    assert (thread_counts_set, caplog.messages) == ([], [])
    monkeypatch.delenv("OMP_NUM_THREADS")
    use_one_thread_for_the_demo()
    assert thread_counts_set == [1]
    assert caplog.messages == ["the demo model runs on 1 CPU thread (set OMP_NUM_THREADS to choose another count)"]


def test_compile_on_the_cpu_is_said_once_and_the_summary_says_what_it_timed(
    make_ckpt, tokenizer_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="llama.cli.frontend")
    # On an x86 CPU the steps run natively, faster than compiled: --compile is left unused, and said so.
    generator = build_generator(
        str(make_ckpt("mha")),
        str(tokenizer_path),
        0.6,
        0.9,
        4,
        max_seq_len=32,
        max_batch_size=1,
        device="cpu",
        compile=True,
    )
    assert isinstance(generator.decode_step, NativeDecode)
    assert caplog.messages == [
        "--compile is not used: this model's one-token steps run natively "
        "(llama.decoding.native_step), faster than a compiled step"
    ]
    caplog.clear()
    monkeypatch.setattr(native_decode, "for_model", lambda model: None)  # elsewhere (no compiler, Apple silicon)
    build_generator(
        str(make_ckpt("mha")),
        str(tokenizer_path),
        0.6,
        0.9,
        4,
        max_seq_len=32,
        max_batch_size=1,
        device="cpu",
        compile=True,
    )
    assert caplog.messages == [
        "--compile on the CPU: the first generation compiles the decode step (seconds); it pays off for small "
        "models, not for 7B-sized ones (see BENCHMARKS.md)"
    ]
    caplog.clear()
    timings = Timings(prompt_tokens=40, prompt_s=0.5, generated_tokens=12, generation_s=1.1)
    log_summary(timings, compiled=True)
    log_summary(timings)
    assert caplog.messages == [
        "generated 12 tokens: the first after 0.50 s (prompt 40 tokens, 80.0 tokens/s), the rest in 1.10 s "
        "(10.0 tokens/s, including the decode step's compilation)",
        "generated 12 tokens: the first after 0.50 s (prompt 40 tokens, 80.0 tokens/s), the rest in 1.10 s "
        "(10.0 tokens/s)",
    ]


def test_sampling_flags_are_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"^top_p must be a number in \(0, 1\], got 2"):
        build_generator(
            str(tmp_path / "missing"), str(tmp_path / "missing.model"), 0.6, 2, 4, max_seq_len=32, max_batch_size=1
        )


@pytest.mark.parametrize(
    "env, expected", [({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False), ({"RANK": "x"}, True)]
)
def test_before_a_process_group_exists_rank_comes_from_the_launcher(monkeypatch, env, expected):
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.delenv("RANK", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert group.is_main_process() is expected


def test_once_a_group_exists_its_global_rank_decides(monkeypatch):
    monkeypatch.setenv("RANK", "0")  # a stale launcher variable must not win over the group
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 2)
    assert group.is_main_process() is False


def test_integer_environment_variables_strict_or_lenient():
    assert env_int("WORLD_SIZE", 1, {"WORLD_SIZE": "4"}) == 4
    assert env_int("WORLD_SIZE", 1, {"WORLD_SIZE": ""}) == 1
    assert env_int("WORLD_SIZE", 1, {"WORLD_SIZE": "four"}, strict=False) == 1
    with pytest.raises(ConfigError, match=r"^environment variable WORLD_SIZE='four' is not an integer$"):
        env_int("WORLD_SIZE", 1, {"WORLD_SIZE": "four"})


def test_one_max_gen_len_rule_refused_beyond_max_seq_len_and_noted_when_a_prompt_clips_it(caplog):
    with pytest.raises(
        ConfigError,
        match=r"^max_gen_len must be an integer in \[0, 128\), got 5000 "
        r"\(max_seq_len=128 must leave room for the prompt\)$",
    ):
        check_gen_len(5000, 128)
    check_gen_len(127, 128)
    check_gen_len(None, 128)
    caplog.set_level(logging.INFO, logger="llama.cli.frontend")
    note_clipped([10, 21, 5], 64, 128)
    assert caplog.text == ""
    note_clipped([10, 21, 5], 120, 128)
    assert (
        "note: max_gen_len=120 does not fit after prompt 2's 21 tokens in max_seq_len=128: answers stop at 107 "
        "new tokens; raise --max_seq_len to let them run to 120" in caplog.text
    )


@pytest.mark.parametrize("chat", [False, True])
def test_streamed_and_printed_runs_report_the_same_token_count(build, caplog, capsys, chat):
    generator = build("mha", max_seq_len=64, max_batch_size=2)
    inputs = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "A list?"}]] if chat else ["A", "B c"]
    caplog.set_level(logging.INFO, logger="llama.cli.frontend")
    counts = []
    for stream in (False, True):
        caplog.clear()
        complete(generator, inputs, 0, 0.9, 12, chat=chat, stream=stream, options={"stop": ["zzq"]} if stream else {})
        summary = next(m for m in caplog.messages if m.startswith("generated "))
        counts.append(int(summary.split()[1].rstrip(":")))
    assert counts[0] == counts[1] == generator.last_timings.generated_tokens > 0
    assert capsys.readouterr().out.count(SEPARATOR) == 4
