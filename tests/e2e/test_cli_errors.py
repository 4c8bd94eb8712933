"""Each user mistake through the example scripts: exit status 1, no traceback, one `error:` line naming it.

Every case runs in its own process. To keep torch's import from dominating the run time, cases
are forked from one warm interpreter (tests/support/cli_runner.py) on Linux, and run as plain
subprocesses elsewhere; test_plain_subprocess_* and the torchrun test use real launches.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llama.testing.synthetic import params_dict
from llama.testing.synthetic import tiny_args as model_args
from llama.weights.meta import save_checkpoint
from support.helpers import REPO, subprocess_env

TEXT = str(REPO / "example_text_completion.py")
CHAT = str(REPO / "example_chat_completion.py")
RUNNER = str(REPO / "tests" / "support" / "cli_runner.py")
TIMEOUT = 180  # seconds; generous because the machine is shared


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def error_lines(self):
        return [line for line in self.err.splitlines() if line.startswith("error:")]


class Forked:
    """Sends cases to one cli_runner.py process; each case runs in a child forked from it."""

    def __init__(self, tmp: Path):
        self.tmp, self.n = tmp, 0
        self.proc = subprocess.Popen(
            [sys.executable, RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            cwd=str(tmp),
        )

    def __call__(self, script, *args, env=None, cwd=None) -> Result:
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        case = {
            "script": script,
            "args": [str(a) for a in args],
            "env": env or subprocess_env(),
            "cwd": str(cwd or self.tmp),
            "stdout": str(out),
            "stderr": str(err),
            "timeout": TIMEOUT,
        }
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return Result(rc, out.read_text(), err.read_text())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def launch(script, *args, env=None, cwd=None, launcher=()) -> Result:
    """A real `python script args...` (or `launcher... script args...`)."""
    cmd = list(launcher) or [sys.executable]
    done = subprocess.run(
        [*cmd, script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env or subprocess_env(),
        cwd=cwd,
        timeout=TIMEOUT,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        yield launch
        return
    runner = Forked(tmp_path_factory.mktemp("cli"))
    yield runner
    runner.close()


def assert_one_error(res: Result, *fragments: str) -> str:
    """Exit 1, no traceback, exactly one `error:` line, which contains every fragment."""
    assert res.rc == 1, res
    assert "Traceback" not in res.err, res.err
    lines = res.error_lines()
    assert len(lines) == 1, res.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, full_state):
    """name -> checkpoint directory, each broken in one way."""
    root = tmp_path_factory.mktemp("cli-ckpts")
    params = params_dict(model_args("mha"))

    def write(name, state=None, p=None, n_shards=1):
        save_checkpoint(dict(full_state("mha")) if state is None else state, p or params, root / name, n_shards)
        return root / name

    out = {"good": write("good"), "no_pth": root / "no_pth"}
    out["no_pth"].mkdir()
    (out["no_pth"] / "params.json").write_text(json.dumps(params))
    out["bad_json"] = write("bad_json")
    (out["bad_json"] / "params.json").write_text("{dim: 64}")
    out["bad_heads"] = write("bad_heads", p={**params, "dim": 66})
    out["truncated"] = write("truncated", n_shards=2)
    shard = out["truncated"] / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[:2000])
    state = dict(full_state("mha"))
    del state["norm.weight"]
    out["missing"] = write("missing", state=state)
    state = dict(full_state("mha"))
    state["output.weight"] = state["output.weight"] * 1e5  # float16 logits overflow
    out["overflow"] = write("overflow", state=state)
    return out


# --- checkpoint directory and tokenizer ---------------------------------------------------------


def test_missing_ckpt_dir(cli, tokenizer_path, tmp_path):
    assert_one_error(
        cli(TEXT, tmp_path / "llama-2-7b", tokenizer_path),
        f"checkpoint directory '{tmp_path / 'llama-2-7b'}' not found",
        "name a folder with params.json and consolidated.*.pth",
    )


def test_ckpt_dir_without_pth(cli, ckpts, tokenizer_path):
    assert_one_error(cli(TEXT, ckpts["no_pth"], tokenizer_path), "no *.pth checkpoint files in", "consolidated.00.pth")


def test_params_json_not_json(cli, ckpts, tokenizer_path):
    assert_one_error(cli(TEXT, ckpts["bad_json"], tokenizer_path), "params.json' is not valid JSON")


def test_params_json_inconsistent(cli, ckpts, tokenizer_path):
    assert_one_error(cli(TEXT, ckpts["bad_heads"], tokenizer_path), "dim=66 is not divisible by n_heads=4")


def test_missing_tokenizer(cli, ckpts, tmp_path):
    assert_one_error(
        cli(TEXT, ckpts["good"], tmp_path / "tokenizer.model"),
        f"tokenizer file '{tmp_path / 'tokenizer.model'}' not found",
        "--tokenizer_path",
    )


def test_tokenizer_that_is_not_sentencepiece(cli, ckpts):
    assert_one_error(cli(TEXT, ckpts["good"], ckpts["good"] / "params.json"), "is JSON but not a tokenizer.json")


# --- shards -------------------------------------------------------------------------------------


def test_truncated_shard_is_named(cli, ckpts, tokenizer_path):
    assert_one_error(
        cli(TEXT, ckpts["truncated"], tokenizer_path),
        f"cannot read checkpoint '{ckpts['truncated'] / 'consolidated.01.pth'}' (2000 bytes)",
    )


def test_missing_weight_is_named(cli, ckpts, tokenizer_path):
    assert_one_error(cli(TEXT, ckpts["missing"], tokenizer_path), "missing weights ['norm.weight']")


class Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_shard_is_refused_and_its_code_never_runs(cli, tmp_path, tokenizer_path, full_state):
    marker = tmp_path / "pwned"
    save_checkpoint(full_state("mha"), params_dict(model_args("mha")), tmp_path / "ckpt")
    torch.save({**full_state("mha"), "x": Hostile(marker)}, tmp_path / "ckpt" / "consolidated.00.pth")
    assert_one_error(cli(TEXT, tmp_path / "ckpt", tokenizer_path), "refused to load", "could run code")
    assert not marker.exists()


# --- arguments ----------------------------------------------------------------------------------


def test_non_positive_max_seq_len(cli, ckpts, tokenizer_path):
    assert_one_error(
        cli(TEXT, ckpts["good"], tokenizer_path, "--max_seq_len", 0), "max_seq_len must be a whole number > 0, got 0"
    )


def test_sampling_flags_are_checked_before_the_model_loads(cli, ckpts, tokenizer_path):
    res = cli(TEXT, ckpts["good"], tokenizer_path, "--temperature=-1")
    assert_one_error(res, "temperature must be a number >= 0 (0 = greedy), got -1")
    assert "Loaded in" not in res.out


def test_chat_top_p_out_of_range(cli, ckpts, tokenizer_path):
    assert_one_error(cli(CHAT, ckpts["good"], tokenizer_path, "--top_p", 2), "top_p must be a number in (0, 1], got 2")


def test_unknown_flag_is_refused_before_anything_runs(cli, ckpts, tokenizer_path):
    res = cli(TEXT, ckpts["good"], tokenizer_path, "--max_gen_len", 2, "--temprature", 0.5)
    assert_one_error(res, "unknown flag '--temprature'", "accepts --ckpt_dir, --tokenizer_path, --temperature")
    assert res.out == ""


def test_a_checkpoint_without_its_tokenizer_names_the_places_looked(cli, ckpts):
    # Without --tokenizer_path the tokenizer.model beside the weights is used; here there is none.
    good = ckpts["good"]
    assert_one_error(
        cli(CHAT, "--ckpt_dir", good),
        "no tokenizer given and none found with the weights (looked for "
        f"{good}/tokenizer.model, {good}/original/tokenizer.model, {good}/tokenizer.json)",
        "--tokenizer_path",
    )


def test_surplus_positional_arguments(cli, ckpts, tokenizer_path):
    args = [ckpts["good"], tokenizer_path, 0.6, 0.9, 32, 2, 1, "cpu", "float32", "oops"]
    assert_one_error(cli(TEXT, *args), "unexpected extra arguments ['oops']")


# --- generation ---------------------------------------------------------------------------------


def test_fp16_overflow_names_the_dtype(cli, ckpts, tokenizer_path):
    res = cli(TEXT, ckpts["overflow"], tokenizer_path, "--device", "cpu", "--dtype", "float16", "--max_gen_len", 2)
    assert_one_error(res, "non-finite logits", "float16", "--dtype bfloat16 or --dtype float32")


def test_a_good_run_still_works(cli, ckpts, tokenizer_path):
    res = cli(TEXT, ckpts["good"], tokenizer_path, "--device", "cpu", "--max_gen_len", 2)
    assert res.rc == 0, res.err
    assert res.error_lines() == [] and sum(line.startswith("> ") for line in res.out.splitlines()) == 4


# --- debugging ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(cli, ckpts, tmp_path, how):
    args = [ckpts["good"], tmp_path / "tokenizer.model"] + (["--debug"] if how == "flag" else [])
    res = cli(TEXT, *args, env=subprocess_env(LLAMA_DEBUG="1") if how == "env" else None)
    assert res.rc == 1
    assert "Traceback (most recent call last)" in res.err
    assert "llama.errors.MissingFileError: tokenizer file" in res.err


# --- real launches ------------------------------------------------------------------------------


def test_plain_subprocess_gives_one_error_line(ckpts, tmp_path):
    assert_one_error(launch(TEXT, ckpts["good"], tmp_path / "tokenizer.model"), "tokenizer file")


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_reports_a_failure_of_rank_1_once_from_rank_0(ckpts, tokenizer_path, tmp_path):
    """consolidated.01.pth is read by rank 1 only; rank 0 learns of it and speaks for both."""
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    res = launch(
        TEXT,
        ckpts["truncated"],
        tokenizer_path,
        cwd=tmp_path,
        launcher=[torchrun, "--standalone", "--nproc_per_node", "2"],
    )
    assert res.rc != 0
    lines = res.error_lines()
    assert lines == [lines[0]] and lines[0].startswith("error: rank 1: cannot read checkpoint"), res.err
    assert "consolidated.01.pth" in lines[0]
    # The only traceback is torchrun's own report; none comes from our code.
    assert not [line for line in res.err.splitlines() if line.startswith("  File") and "/llama/" in line]
    assert "traceback : rank 1: cannot read checkpoint" in res.err  # torchrun's summary names the cause
