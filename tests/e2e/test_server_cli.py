"""`python -m llama.server` as a user runs it: the URL once loaded, the demo model by default, the
API key from the environment, SIGTERM ending the requests in flight and exiting 0, flag errors as
one line, and `torchrun --nproc_per_node 2` serving the single process's answers."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from support.helpers import subprocess_env

URL = re.compile(r"serving (\S+) at (http://127\.0\.0\.1:\d+/v1) ")


class Server:
    """A server process on a free loopback port (port 0: the printed URL names the one it got)."""

    def __init__(self, *args, launcher=(sys.executable, "-m", "llama.server"), env=None):
        cmd = [*launcher, *map(str, args), "--port", "0"]
        self.proc = subprocess.Popen(cmd, env=env or subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        self.lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the server exited: {self.proc.stderr.read()[-3000:]}")
            self.lines.append(line)
            found = URL.search(line)
            if found:
                self.model, self.url = found.groups()
                return
        raise AssertionError("the server printed no URL")

    def complete(self, prompt: str, max_tokens: int = 12, **headers) -> httpx.Response:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return httpx.post(f"{self.url}/completions", json=body, headers=headers, timeout=120)

    def stop(self, sig=signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_the_demo_server_prints_its_url_and_answers_as_the_library(tmp_path):
    server = Server()
    try:
        assert server.model == "llama-demo"
        assert httpx.get(server.url.replace("/v1", "/health"), timeout=30).status_code == 200
        got = server.complete("A list comprehension").json()["choices"][0]["text"]
        from llama import Llama

        want = Llama.build_demo(device="cpu").text_completion(["A list comprehension"], temperature=0, max_gen_len=12)
        assert got == want[0]["generation"]
    finally:
        assert server.stop() == 0


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0():
    server = Server("--max_seq_len", 256)
    body = {"model": server.model, "prompt": "A long answer", "max_tokens": 200, "temperature": 0, "stream": True}
    got = {}

    def stream():
        with httpx.stream("POST", f"{server.url}/completions", json=body, timeout=120) as response:
            got["events"] = [line for line in response.iter_lines() if line]

    reader = threading.Thread(target=stream)
    reader.start()
    time.sleep(0.3)
    assert server.stop(signal.SIGTERM) == 0
    reader.join(60)
    assert got["events"][-1] == "data: [DONE]"
    last = json.loads(got["events"][-2][len("data: ") :])
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


def test_the_api_key_comes_from_the_environment():
    server = Server(env=subprocess_env(LLAMA_API_KEY="k3y"))
    try:
        assert server.complete("A").status_code == 401
        assert server.complete("A", Authorization="Bearer k3y").status_code == 200
    finally:
        server.stop()


def test_a_bad_flag_is_one_error_line():
    done = subprocess.run([sys.executable, "-m", "llama.server", "--quantize", "int3"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr.strip().splitlines()[-1]
        == "error: unknown quantization 'int3'; use one of int8, int4 (or leave it unset)"
    )


def test_help_lists_the_server_flags():
    done = subprocess.run([sys.executable, "-m", "llama.server", "--help"], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m llama.server")
    for flag in ("--host HOST", "--port PORT", "--api_key KEY", "--model_name NAME", "--max_batch_size N"):
        assert flag in done.stdout


@pytest.mark.parametrize("config", ["mha"])
def test_torchrun_two_processes_serve_the_single_processs_answers(make_ckpt, tokenizer_path, config):
    args = ("--ckpt_dir", make_ckpt(config, 2), "--tokenizer_path", tokenizer_path, "--max_seq_len", 64)
    single = Server(*args)
    try:
        want = [single.complete(p, 8).json()["choices"][0]["text"] for p in ("A list", "The function")]
    finally:
        single.stop()
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "llama.server")  # fmt: skip
    sharded = Server(*args, launcher=launcher)
    try:
        got = [sharded.complete(p, 8).json()["choices"][0]["text"] for p in ("A list", "The function")]
        assert got == want
        rank0 = httpx.get(sharded.url.replace("/v1", "/health"), timeout=30).json()["pid"]
        os.kill(rank0, signal.SIGTERM)  # rank 0 stops serving and releases the other rank
        assert sharded.proc.wait(60) == 0
    finally:
        sharded.stop()


def test_a_killed_rank_ends_the_sharded_server_and_torchrun_names_it(make_ckpt, tokenizer_path):
    # The request caught by the kill is answered with the lost rank at once (not held until the
    # default 30 s --shutdown_timeout), and rank 0 then exits well within torchrun's own 30 s grace.
    args = ("--ckpt_dir", make_ckpt("mha", 2), "--tokenizer_path", tokenizer_path, "--max_seq_len", 64)
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "llama.server")  # fmt: skip
    sharded = Server(*args, launcher=launcher)
    try:
        assert sharded.complete("A list", 4).status_code == 200
        rank0 = httpx.get(sharded.url.replace("/v1", "/health"), timeout=30).json()["pid"]
        pid = sharded.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            workers = [int(p) for p in f.read().split()]
        os.kill(next(p for p in workers if p != rank0), signal.SIGKILL)  # rank 1, as by the OOM killer
        started = time.monotonic()
        try:
            answer = sharded.complete("The function", 4)  # rank 0 finds its peer gone, or is ended first
            assert answer.status_code == 500, answer.text
            assert answer.json()["error"]["message"].startswith("generation failed: lost contact with another rank")
        except httpx.HTTPError:
            pass
        assert sharded.proc.wait(90) != 0
        assert time.monotonic() - started < 20
        report = sharded.proc.stderr.read()
        assert "rank      : 1 (local_rank: 1)" in report and "(SIGKILL)" in report, report[-2000:]
    finally:
        sharded.stop()
