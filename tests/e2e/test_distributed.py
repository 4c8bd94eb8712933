"""Model parallelism over several processes on the CPU (gloo): torchrun with 1, 2 and 4 processes,
two launchers acting as two nodes, ranks that die or hang mid-generation, and who reports what."""

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Tuple

import pytest

from llama.cli.quantize import quantize_checkpoint
from llama.kernels.formats import METHODS
from support.helpers import REPO, subprocess_env
from support.llama3_tokenizer import llama3_tokenizer_path

WORKER = REPO / "tests" / "support" / "dist_worker.py"
DEADLINE_S = 60  # every rank must be gone this long after one fails
HANG_TIMEOUT_S = 10  # LLAMA_COLLECTIVE_TIMEOUT for the hang test: well above any stall of a busy CPU


def _torchrun(nproc: int, script: Path, *args) -> List[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(script),
        *map(str, args),
    ]


def _node(node_rank: int, port: int, script: Path, *args) -> List[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--node_rank",
        str(node_rank),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(script),
        *map(str, args),
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cmds: List[List[str]], env: dict) -> Tuple[List[subprocess.CompletedProcess], float]:
    """Run the launchers together; -> their results and when the last one exited."""
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for cmd in cmds]
    outs = [proc.communicate(timeout=300) for proc in procs]
    finished = time.time()
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)], finished


@pytest.fixture(scope="module")
def launches(make_ckpt, tokenizer_path, tmp_path_factory):
    """Every launch this module checks, started together in the background: each mostly waits
    (imports, rendezvous, timeouts), so running them side by side keeps the module fast."""
    tok, example = tokenizer_path, REPO / "example_text_completion.py"
    unreadable = tmp_path_factory.mktemp("unreadable-2-shards")
    (unreadable / "params.json").write_bytes((make_ckpt("mha", 2) / "params.json").read_bytes())
    for i in range(2):  # loading these would fail with a CheckpointError
        (unreadable / f"consolidated.{i:02d}.pth").write_bytes(b"not a checkpoint")
    # The 2-shard float checkpoint quantized by `python -m llama.quantize`, once per method.
    stored = [tmp_path_factory.mktemp(f"mha-2shards-{method}") / "quantized" for method in METHODS]
    for method, dst in zip(METHODS, stored):
        quantize_checkpoint(make_ckpt("mha", 2), dst, method)
    port = _free_port()
    jobs = {  # "hang" mostly waits out its timeout: started first, it overlaps the busy launches
        "hang": (
            [_torchrun(2, WORKER, make_ckpt("mha", 1), tok, "--fail_rank", 1, "--fail_how", "hang")],
            {"LLAMA_COLLECTIVE_TIMEOUT": str(HANG_TIMEOUT_S)},
        ),
        # One launch, four models: every method quantized while loading, then every stored checkpoint.
        "2procs-quantized": (
            [
                _torchrun(
                    2,
                    WORKER,
                    make_ckpt("mha", 2),
                    tok,
                    "--quantize",
                    ",".join(METHODS),
                    "--also",
                    ",".join(map(str, stored)),
                )
            ],
            {},
        ),
        "1proc-4shards-sampled": ([_torchrun(1, example, make_ckpt("mha", 4), tok, "--max_gen_len", 4)], {}),
        "2procs-gqa-greedy": (
            [_torchrun(2, example, make_ckpt("gqa", 2), tok, "--max_gen_len", 4, "--temperature", 0)],
            {},
        ),
        "2procs-llama3-vocab-split-sampled": (  # the tokenizer.model is found in the checkpoint folder
            [_torchrun(2, example, llama3_ckpt(make_ckpt("llama3.1", 2)), "--max_gen_len", 4)],
            {},
        ),
        "4procs-2shards-sampled": ([_torchrun(4, example, make_ckpt("mha", 2), tok, "--max_gen_len", 4)], {}),
        "kill": ([_torchrun(2, WORKER, make_ckpt("mha", 4), tok, "--fail_rank", 1, "--fail_how", "kill")], {}),
        "two-nodes": ([_node(n, port, WORKER, make_ckpt("gqa", 2), tok, "--fail_rank", 1) for n in (0, 1)], {}),
        "3procs-2shards": ([_torchrun(3, example, unreadable, tok)], {}),
    }
    pool = ThreadPoolExecutor(max_workers=3)
    futures = {name: pool.submit(_launch, cmds, subprocess_env(**env)) for name, (cmds, env) in jobs.items()}
    yield lambda name: futures[name].result()
    pool.shutdown(wait=True)


def _error_lines(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _failed_at(stderr: str) -> float:
    return float(re.search(r"^failing \(\w+\) at ([\d.]+)$", stderr, re.M).group(1))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("example_text_completion", REPO / "example_text_completion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without_timing(stdout: str) -> str:
    return "\n".join(line for line in stdout.splitlines() if not line.startswith("Loaded in "))


def llama3_ckpt(ckpt: Path) -> Path:
    """A Llama 3 checkpoint folder as Meta ships it: its tokenizer.model inside."""
    if not (ckpt / "tokenizer.model").exists():
        shutil.copy(llama3_tokenizer_path(), ckpt / "tokenizer.model")
    return ckpt


@pytest.mark.parametrize(
    "name, nproc, config, temperature",
    [
        ("1proc-4shards-sampled", 1, "mha", 0.6),
        ("2procs-gqa-greedy", 2, "gqa", 0),
        ("4procs-2shards-sampled", 4, "mha", 0.6),
        ("2procs-llama3-vocab-split-sampled", 2, "llama3.1", 0.6),
    ],
)
def test_torchrun_example_prints_the_single_process_text(
    launches, example, make_ckpt, tokenizer_path, capsys, name, nproc, config, temperature
):
    (run,), _ = launches(name)
    assert run.returncode == 0, run.stderr
    tok = llama3_tokenizer_path() if config.startswith("llama3") else tokenizer_path
    example.main(str(make_ckpt(config, 1)), str(tok), temperature=temperature, max_gen_len=4)
    single = capsys.readouterr().out
    assert "> " in single
    assert _without_timing(run.stdout) == _without_timing(single)  # rank 0 alone prints, the same text
    runtime = [line.rsplit(" decode=", 1)[0] for line in run.stderr.splitlines() if line.startswith("runtime: ")]
    assert runtime == [
        f"runtime: backend=gloo device=cpu dtype=float32 world_size={nproc} rank=0 "
        "(no CUDA or MPS -> cpu; no CUDA -> gloo)"
    ]


def generations(generator) -> dict:
    from support.dist_worker import generations

    return generations(generator)


def _reference(build, config):
    return generations(build(config, 1, max_seq_len=64, max_batch_size=2))


def test_a_killed_rank_ends_the_job_quickly_and_torchrun_names_it(launches, build):
    # 4 shards merged pairwise onto 2 ranks; rank 1 is then SIGKILLed (as by the OOM killer) mid-generation.
    (run,), finished = launches("kill")
    assert json.loads(run.stdout.splitlines()[-1]) == _reference(build, "mha")
    assert run.returncode != 0
    assert finished - _failed_at(run.stderr) < DEADLINE_S
    # torchrun's failure report lists every failed rank; under load, rank 0's own exit can be
    # observed first, so look for rank 1's SIGKILL anywhere in the report, not only as Root Cause.
    report = run.stderr.split("Failures:", 1)[-1]
    entries = re.split(r"\n\s*\[\d+\]:\n", report)
    assert any("rank      : 1 (local_rank: 1)" in e and "(SIGKILL)" in e for e in entries), report


def test_a_hung_rank_times_out_instead_of_hanging_the_others(launches, build):
    # One shard split over 2 ranks; rank 1 then stops answering, rank 0 gives up after the collective timeout.
    (run,), finished = launches("hang")
    assert json.loads(run.stdout.splitlines()[-1]) == _reference(build, "mha")
    assert run.returncode != 0
    assert finished - _failed_at(run.stderr) < DEADLINE_S
    errors = _error_lines(run.stderr)
    assert len(errors) == 1 and errors[0].startswith(
        f"error: rank 0: another rank stopped answering (Timed out waiting {HANG_TIMEOUT_S * 1000}ms for "
    ), run.stderr


def test_two_launchers_as_two_nodes_match_one_process_and_report_a_failed_rank(launches, build):
    (node0, node1), finished = launches("two-nodes")
    assert json.loads(node0.stdout.splitlines()[-1]) == _reference(build, "gqa"), node0.stderr
    assert (node0.returncode != 0, node1.returncode != 0) == (True, True)
    assert finished - _failed_at(node1.stderr) < DEADLINE_S
    assert _error_lines(node1.stderr) == ["error: rank 1: RuntimeError: injected failure at forward call 3"]
    lost = _error_lines(node0.stderr)
    assert len(lost) == 1 and lost[0].startswith("error: rank 0: lost contact with another rank ("), node0.stderr


def test_an_impossible_process_count_fails_before_loading_with_one_message(launches):
    (run,), _ = launches("3procs-2shards")
    assert run.returncode != 0
    assert _error_lines(run.stderr) == [
        "error: a checkpoint with 2 shards cannot run on 3 model-parallel processes: one of 2 and 3 must divide "
        "the other; valid process counts: [1, 2, 4] (torchrun --nproc_per_node N, or python -m llama.reshard to "
        "change the shard count)"
    ], run.stderr


@pytest.mark.parametrize("method", METHODS)
def test_torchrun_quantized_models_generate_the_single_process_tokens(launches, build, method):
    (run,), _ = launches("2procs-quantized")
    assert run.returncode == 0, run.stderr
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    runtime = [line.rsplit(" decode=", 1)[0] for line in run.stderr.splitlines() if line.startswith("runtime: ")]
    assert len(results) == len(runtime) == 2 * len(METHODS)
    live, stored = (results[i * len(METHODS) + METHODS.index(method)] for i in (0, 1))
    line = (
        "runtime: backend=gloo device=cpu dtype=float32 world_size=2 rank=0 (no CUDA or MPS -> cpu; no CUDA -> gloo) "
        f"quantize={method}"
    )
    assert [runtime[i * len(METHODS) + METHODS.index(method)] for i in (0, 1)] == [line, line]
    # The same weights whichever way they were quantized, so the same tokens, sampled ones too.
    assert stored == live
    single = generations(build("mha", 1, max_seq_len=64, max_batch_size=2, quantize=method))
    # The tokens one process picks, sampled ones too: the native kernels return float32 partial
    # sums (torch's fused kernels, where the native ones cannot be built, round them to bfloat16
    # before the all-reduce and may move a sampled token).
    assert live == single
