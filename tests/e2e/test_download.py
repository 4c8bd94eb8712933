"""Tests for download.sh against a local fake of Meta's bucket.

Everything runs on 127.0.0.1: a Python http.server in a thread serves small
random files laid out like the real Llama 2 bucket (``bucket``) or Llama 3
bucket (``bucket3``, the layout of ``meta-llama/llama3``'s download.sh),
behind a presigned-style URL
(``http://127.0.0.1:PORT/*?Policy=...&Signature=...&Key-Pair-Id=...``).
The script runs under a PATH made of symlinks to just the tools it may use,
so each test picks the downloader (wget or curl) and the MD5 tool.
"""

import hashlib
import http.server
import os
import random
import shutil
import subprocess
import sys
import threading
import urllib.parse

import pytest

from support.helpers import REPO

SCRIPT = REPO / "download.sh"

# Per family: model name -> (folder in the bucket, folder on disk, shards).
MODELS = {
    2: {
        "7B": ("llama-2-7b", "llama-2-7b", 1),
        "13B": ("llama-2-13b", "llama-2-13b", 2),
        "70B": ("llama-2-70b", "llama-2-70b", 8),
        "7B-chat": ("llama-2-7b-chat", "llama-2-7b-chat", 1),
        "13B-chat": ("llama-2-13b-chat", "llama-2-13b-chat", 2),
        "70B-chat": ("llama-2-70b-chat", "llama-2-70b-chat", 8),
    },
    3: {
        "8B": ("8b_pre_trained", "Meta-Llama-3-8B", 1),
        "8B-instruct": ("8b_instruction_tuned", "Meta-Llama-3-8B-Instruct", 1),
        "70B": ("70b_pre_trained", "Meta-Llama-3-70B", 8),
        "70B-instruct": ("70b_instruction_tuned", "Meta-Llama-3-70B-Instruct", 8),
    },
}
TOP_FILES = {
    2: ["LICENSE", "USE_POLICY.md", "tokenizer.model", "tokenizer_checklist.chk"],
    3: ["LICENSE", "USE_POLICY"],
}
QUERY = "Policy=eyJTdGF0ZW1lbnQiOlt7fV19&Signature=c2lnbmF0dXJl~abc_&Key-Pair-Id=K3TESTPAIR"

# Tools the script may use besides the downloader and the MD5 tool.
BASE_TOOLS = ["bash", "env", "cat", "cut", "mkdir", "mktemp", "rm", "sed", "sleep", "tail", "tee", "tr"]
OPTIONAL_TOOLS = ["wget", "curl", "md5sum", "md5"]
ORIGINAL_PATH = os.environ.get("PATH", os.defpath)
FOUND = {t: shutil.which(t, path=ORIGINAL_PATH) for t in BASE_TOOLS + OPTIONAL_TOOLS}
DOWNLOADERS = [t for t in ("wget", "curl") if FOUND[t]]

needs_downloader = pytest.mark.skipif(not DOWNLOADERS, reason="neither wget nor curl is installed")


def tool_param(name):
    return pytest.param(name, marks=pytest.mark.skipif(not FOUND[name], reason=f"{name} is not installed"))


each_downloader = pytest.mark.parametrize("tool", [tool_param("wget"), tool_param("curl")])


def checked_files(family, shards):
    """Names listed in a model folder's checklist.chk."""
    names = [f"consolidated.{i:02d}.pth" for i in range(shards)] + ["params.json"]
    return names + (["tokenizer.model"] if family == 3 else [])


def layout(family, models):
    """{path on disk: path in the bucket} for the top files and the models."""
    files = {rel: rel for rel in TOP_FILES[family]}
    for m in models:
        remote, local, shards = MODELS[family][m]
        for name in checked_files(family, shards) + ["checklist.chk"]:
            files[f"{local}/{name}"] = f"{remote}/{name}"
    return files


def md5(data):
    return hashlib.md5(data).hexdigest()


# ------------------------------------------------------------------ server --


class Bucket:
    """Files, behaviour switches, and a log of every request received."""

    def __init__(self, rng, family):
        self.family = family
        self.files = {}
        self.requests = []
        self.lock = threading.Lock()
        self.expired = False  # answer 403 to everything
        self.fail = {}  # rel path -> number of 500 answers to give first
        self.cut = {}  # rel path -> number of answers to break off midway
        self.files["LICENSE"] = f"LLAMA {family} COMMUNITY LICENSE AGREEMENT (test copy)\n".encode()
        if family == 2:
            self.files["USE_POLICY.md"] = b"# Llama 2 Acceptable Use Policy (test copy)\n"
            self.files["tokenizer.model"] = rng.randbytes(3000)
            self.files["tokenizer_checklist.chk"] = f"{md5(self.files['tokenizer.model'])}  tokenizer.model\n".encode()
        else:
            self.files["USE_POLICY"] = b"Meta Llama 3 Acceptable Use Policy (test copy)\n"
        for remote, _, shards in MODELS[family].values():
            lines = []
            for name in checked_files(family, shards):
                data = (
                    b'{"dim": 64, "n_layers": 2, "n_heads": 4}\n'
                    if name == "params.json"
                    else rng.randbytes(20000 + rng.randrange(5000))
                )
                self.files[f"{remote}/{name}"] = data
                lines.append(f"{md5(data)}  {name}\n")
            self.files[f"{remote}/checklist.chk"] = "".join(lines).encode()

    def requested(self, rel):
        with self.lock:
            return [r for r in self.requests if r["path"] == rel]


class Handler(http.server.BaseHTTPRequestHandler):
    bucket = None  # set on a per-server subclass

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        b = self.bucket
        url = urllib.parse.urlsplit(self.path)
        rel = urllib.parse.unquote(url.path.lstrip("/"))
        query = urllib.parse.parse_qs(url.query)
        rng = self.headers.get("Range")
        entry = {"path": rel, "range": rng, "ua": self.headers.get("User-Agent", "")}
        with b.lock:
            b.requests.append(entry)
            fail = b.fail.get(rel, 0)
            if fail:
                b.fail[rel] = fail - 1
            cut = b.cut.get(rel, 0)
            if cut:
                b.cut[rel] = cut - 1

        def answer(status, *a, **k):
            entry["status"] = status
            self._send(status, *a, **k)

        signed = all(query.get(k) for k in ("Policy", "Signature", "Key-Pair-Id"))
        if b.expired or not signed:
            return answer(403, b"<Error><Code>AccessDenied</Code></Error>")
        if rel not in b.files:
            return answer(404, b"<Error><Code>NoSuchKey</Code></Error>")
        if fail:
            return answer(500, b"internal error")
        data = b.files[rel]
        start = 0
        if rng:
            assert rng.startswith("bytes=") and rng.endswith("-"), rng
            start = int(rng[len("bytes=") : -1])
            if start >= len(data):
                return answer(416, headers=[("Content-Range", f"bytes */{len(data)}")])
        body = data[start:]
        entry["status"] = 206 if rng else 200
        self.send_response(entry["status"])
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if cut:
            # Promise the whole body, send half, and drop the connection.
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


def serve(request, family):
    b = Bucket(random.Random(request.node.name), family)
    handler = type("BoundHandler", (Handler,), {"bucket": b})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    b.url = f"http://127.0.0.1:{server.server_address[1]}/*?{QUERY}"
    yield b
    server.shutdown()
    server.server_close()


@pytest.fixture
def bucket(request):
    """Meta's Llama 2 bucket."""
    yield from serve(request, 2)


@pytest.fixture
def bucket3(request):
    """Meta's Llama 3 bucket (a Llama 3 URL serves nothing of Llama 2)."""
    yield from serve(request, 3)


# ------------------------------------------------------------- running it --


def make_bin(directory, exclude=(), extra=None):
    """A PATH directory with symlinks to the tools the script may use."""
    directory.mkdir(parents=True)
    for name, path in FOUND.items():
        if path and name not in exclude:
            (directory / name).symlink_to(path)
    if "python3" not in exclude:
        (directory / "python3").symlink_to(os.path.realpath(sys.executable))
    for name, text in (extra or {}).items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return directory


@pytest.fixture
def work(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


def run(work, bin_dir, env=None, stdin=None, args=(), tty=False):
    """Runs the script; with tty=True its stdin is a terminal (a pty) that
    has `stdin` typed into it, so bash shows the `read -p` prompts on stderr."""
    full_env = {
        "PATH": str(bin_dir),
        "HOME": str(work / "home"),  # no ~/.wgetrc or ~/.curlrc
        "TMPDIR": str(work / "tmp"),
        "LC_ALL": "C",
        "LLAMA_DOWNLOAD_RETRY_DELAY": "0",
    }
    full_env.update(env or {})
    command = [str(bin_dir / "bash"), str(SCRIPT), *args]
    if not tty:
        return subprocess.run(
            command, cwd=work, env=full_env, input=stdin or "", capture_output=True, text=True, timeout=60
        )
    master, slave = os.openpty()
    try:
        os.write(master, (stdin or "").encode())
        return subprocess.run(command, cwd=work, env=full_env, stdin=slave, capture_output=True, text=True, timeout=60)
    finally:
        os.close(master)
        os.close(slave)


def only_bin(work, tool, **kw):
    other = {"wget": "curl", "curl": "wget"}[tool]
    return make_bin(work / "bin", exclude=(other,) + tuple(kw.pop("exclude", ())), **kw)


def any_bin(work, **kw):
    return make_bin(work / "bin", **kw)


def run_models(work, bucket, bin_dir, models, **env):
    return run(work, bin_dir, {"PRESIGNED_URL": bucket.url, "MODEL_SIZE": models, "TARGET_FOLDER": "out", **env})


def assert_downloaded(bucket, target, models):
    expected = layout(bucket.family, models)
    on_disk = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    assert on_disk == set(expected)
    for local, remote in expected.items():
        assert (target / local).read_bytes() == bucket.files[remote], local


def assert_error(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, result.stderr)


# ------------------------------------------------------------------- tests --


@each_downloader
def test_two_models(work, bucket, tool):
    result = run_models(work, bucket, only_bin(work, tool), "7B,13B-chat")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert_downloaded(bucket, work / "out", ["7B", "13B-chat"])
    assert "consolidated.01.pth: OK" in result.stdout
    assert all(tool in r["ua"].lower() for r in bucket.requests)


@pytest.mark.skipif(not (FOUND["wget"] and FOUND["curl"]), reason="needs wget and curl")
def test_wget_preferred_over_curl(work, bucket):
    result = run_models(work, bucket, any_bin(work), "7B")
    assert result.returncode == 0, result.stderr
    assert bucket.requests and all("wget" in r["ua"].lower() for r in bucket.requests)


@pytest.mark.skipif(not FOUND["curl"], reason="curl is not installed")
def test_curl_used_without_wget(work, bucket):
    result = run_models(work, bucket, any_bin(work, exclude=("wget",)), "7B")
    assert result.returncode == 0, result.stderr
    assert bucket.requests and all("curl" in r["ua"].lower() for r in bucket.requests)


@needs_downloader
def test_corrupted_shard(work, bucket):
    bad = bytearray(bucket.files["llama-2-7b/consolidated.00.pth"])
    bad[100] ^= 0xFF
    bucket.files["llama-2-7b/consolidated.00.pth"] = bytes(bad)
    result = run_models(work, bucket, any_bin(work), "7B-chat,7B")
    assert_error(result, "llama-2-7b/consolidated.00.pth", "mismatch")
    assert "consolidated.00.pth: FAILED" in result.stdout
    # Files already verified stay.
    assert (work / "out/tokenizer.model").read_bytes() == bucket.files["tokenizer.model"]
    chat = "llama-2-7b-chat/consolidated.00.pth"
    assert (work / "out" / chat).read_bytes() == bucket.files[chat]


@needs_downloader
def test_corrupted_tokenizer(work, bucket):
    bucket.files["tokenizer.model"] = b"x" + bucket.files["tokenizer.model"][1:]
    result = run_models(work, bucket, any_bin(work), "7B")
    assert_error(result, "tokenizer.model", "mismatch")
    assert not bucket.requested("llama-2-7b/consolidated.00.pth")


@each_downloader
def test_resume_truncated_shard(work, bucket, tool):
    rel = "llama-2-13b-chat/consolidated.01.pth"
    (work / "out/llama-2-13b-chat").mkdir(parents=True)
    (work / "out" / rel).write_bytes(bucket.files[rel][:12345])
    result = run_models(work, bucket, only_bin(work, tool), "13B-chat")
    assert result.returncode == 0, result.stderr
    [req] = bucket.requested(rel)
    assert req["range"] == "bytes=12345-" and req["status"] == 206
    assert_downloaded(bucket, work / "out", ["13B-chat"])


@each_downloader
def test_dropped_connection_is_retried_and_resumed(work, bucket, tool):
    rel = "llama-2-7b/consolidated.00.pth"
    bucket.cut[rel] = 1
    result = run_models(work, bucket, only_bin(work, tool), "7B")
    assert result.returncode == 0, result.stderr
    first, second = bucket.requested(rel)
    assert first["range"] is None
    assert second["range"] == f"bytes={len(bucket.files[rel]) // 2}-"
    assert "retry 1 of 3" in result.stderr
    assert_downloaded(bucket, work / "out", ["7B"])


@each_downloader
def test_server_errors_are_retried(work, bucket, tool):
    rel = "llama-2-7b/params.json"
    bucket.fail[rel] = 2
    result = run_models(work, bucket, only_bin(work, tool), "7B")
    assert result.returncode == 0, result.stderr
    assert [r["status"] for r in bucket.requested(rel)] == [500, 500, 200]
    assert_downloaded(bucket, work / "out", ["7B"])


@needs_downloader
def test_retries_give_up(work, bucket):
    rel = "llama-2-7b/params.json"
    bucket.fail[rel] = 10
    result = run_models(work, bucket, any_bin(work), "7B", LLAMA_DOWNLOAD_RETRIES="1")
    assert_error(result, rel, "2 attempts")
    assert len(bucket.requested(rel)) == 2


@each_downloader
def test_rerun_skips_complete_files(work, bucket, tool):
    bin_dir = only_bin(work, tool)
    assert run_models(work, bucket, bin_dir, "7B").returncode == 0
    bucket.requests.clear()
    result = run_models(work, bucket, bin_dir, "7B")
    assert result.returncode == 0, result.stderr
    assert bucket.requests and all(r["status"] == 416 for r in bucket.requests)
    assert_downloaded(bucket, work / "out", ["7B"])


@each_downloader
def test_expired_url(work, bucket, tool):
    bucket.expired = True
    result = run_models(work, bucket, only_bin(work, tool), "7B")
    assert_error(result, "403", "expired", "new URL")
    assert len(bucket.requests) == 1  # not retried
    assert not (work / "out/LICENSE").exists()


@each_downloader
def test_missing_file_404(work, bucket, tool):
    del bucket.files["llama-2-7b/params.json"]
    result = run_models(work, bucket, only_bin(work, tool), "7B")
    assert_error(result, "404", "llama-2-7b/params.json")
    assert len(bucket.requested("llama-2-7b/params.json")) == 1  # not retried
    assert not (work / "out/llama-2-7b/params.json").exists()


def test_unknown_model_rejected_before_download(work, bucket):
    result = run_models(work, bucket, any_bin(work), "7B,9B,13b-chat")
    assert_error(
        result, "unknown model name '9B'", "Llama 2: 7B,13B,70B,7B-chat,", "Llama 3: 8B,8B-instruct,70B,70B-instruct"
    )
    assert bucket.requests == []
    assert not (work / "out").exists()


def test_missing_url(work, bucket):
    result = run(work, any_bin(work), {"PRESIGNED_URL": "", "MODEL_SIZE": "7B"})
    assert_error(result, "PRESIGNED_URL")
    result = run(work, any_bin(work / "again"), {"MODEL_SIZE": "7B"}, stdin="")
    assert_error(result, "URL")
    result = run(work, any_bin(work / "again2"), {"PRESIGNED_URL": bucket.url.replace("*", "x"), "MODEL_SIZE": "7B"})
    assert_error(result, "'*'")
    assert bucket.requests == []


def test_no_download_tool(work, bucket):
    result = run_models(work, bucket, make_bin(work / "bin", exclude=("wget", "curl")), "7B")
    assert_error(result, "wget", "curl")
    assert bucket.requests == []


@needs_downloader
def test_interactive_answers_on_stdin(work, bucket):
    result = run(work, any_bin(work), stdin=f"{bucket.url}\n7B\n")
    assert result.returncode == 0, result.stderr
    for local, remote in layout(2, ["7B"]).items():
        assert (work / local).read_bytes() == bucket.files[remote]
    assert not (work / "llama-2-13b").exists()
    assert "Llama family: 2 (from '7B'" in result.stdout


@needs_downloader
def test_interactive_enter_means_all(work, bucket):
    # Enter = all models, of the family asked for next (never guessed).
    result = run(work, any_bin(work), {"TARGET_FOLDER": "out"}, stdin=f"  {bucket.url}  \n\n2\n")
    assert result.returncode == 0, result.stderr
    assert_downloaded(bucket, work / "out", list(MODELS[2]))
    assert (work / "out/llama-2-70b-chat/consolidated.07.pth").exists()


@needs_downloader
def test_md5_python_fallback(work, bucket):
    bin_dir = any_bin(work, exclude=("md5sum", "md5"))
    result = run_models(work, bucket, bin_dir, "7B")
    assert result.returncode == 0, result.stderr
    assert "verifying with python3" in result.stdout
    # A corrupted file on disk (same size, so nothing is re-fetched) is caught.
    shard = work / "out/llama-2-7b/consolidated.00.pth"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    result = run_models(work, bucket, bin_dir, "7B")
    assert_error(result, "llama-2-7b/consolidated.00.pth", "mismatch")


@needs_downloader
def test_md5_dash_r_as_on_macos(work, bucket):
    log = work / "md5.log"
    fake_md5 = (
        f"#!{os.path.realpath(sys.executable)}\n"
        "import hashlib, sys\n"
        "assert sys.argv[1] == '-r', sys.argv\n"
        f"open({str(log)!r}, 'a').write(sys.argv[2] + '\\n')\n"
        "print(hashlib.md5(open(sys.argv[2], 'rb').read()).hexdigest(), sys.argv[2])\n"
    )
    bin_dir = any_bin(work, exclude=("md5sum", "md5"), extra={"md5": fake_md5})
    result = run_models(work, bucket, bin_dir, "13B")
    assert result.returncode == 0, result.stderr
    assert "verifying with md5" in result.stdout
    checked = log.read_text().split()
    assert len(checked) == 4  # tokenizer, two shards, params.json
    assert checked[-1].endswith("llama-2-13b/params.json")


def test_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- Llama 3 --


@each_downloader
def test_llama3_8b(work, bucket3, tool):
    result = run_models(work, bucket3, only_bin(work, tool), "8b")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "Llama family: 3 (from '8b'" in result.stdout
    assert "Meta-Llama-3-8B/tokenizer.model: OK" in result.stdout
    assert_downloaded(bucket3, work / "out", ["8B"])
    assert [r["path"] for r in bucket3.requests] == [
        "LICENSE",
        "USE_POLICY",
        "8b_pre_trained/consolidated.00.pth",
        "8b_pre_trained/params.json",
        "8b_pre_trained/tokenizer.model",
        "8b_pre_trained/checklist.chk",
    ]
    assert all(r["status"] == 200 for r in bucket3.requests)


@needs_downloader
def test_llama3_instruct_spellings_and_eight_shards(work, bucket3):
    result = run_models(work, bucket3, any_bin(work), "70b-Instruct, 8B-INSTRUCT,70B-instruct")
    assert result.returncode == 0, result.stderr
    assert_downloaded(bucket3, work / "out", ["70B-instruct", "8B-instruct"])
    shards = sorted(p.name for p in (work / "out/Meta-Llama-3-70B-Instruct").glob("*.pth"))
    assert shards == [f"consolidated.{i:02d}.pth" for i in range(8)]
    order = [
        line.split("Downloading ")[1] for line in result.stdout.splitlines() if line.startswith("Downloading Meta")
    ]
    assert order == ["Meta-Llama-3-70B-Instruct", "Meta-Llama-3-8B-Instruct"]


@needs_downloader
def test_llama3_corrupted_shard(work, bucket3):
    rel = "8b_instruction_tuned/consolidated.00.pth"
    bucket3.files[rel] = bucket3.files[rel][:-1] + b"!"
    result = run_models(work, bucket3, any_bin(work), "8B,8B-instruct")
    assert_error(result, "checksum mismatch: Meta-Llama-3-8B-Instruct/consolidated.00.pth;")
    assert "Meta-Llama-3-8B-Instruct/consolidated.00.pth: FAILED" in result.stdout
    # The model verified before stays.
    good = work / "out/Meta-Llama-3-8B/consolidated.00.pth"
    assert good.read_bytes() == bucket3.files["8b_pre_trained/consolidated.00.pth"]


@needs_downloader
def test_llama3_corrupted_tokenizer_in_model_folder(work, bucket3):
    rel = "8b_pre_trained/tokenizer.model"
    bucket3.files[rel] = b"x" + bucket3.files[rel][1:]
    result = run_models(work, bucket3, any_bin(work), "8B")
    assert_error(result, "checksum mismatch: Meta-Llama-3-8B/tokenizer.model;")


@each_downloader
def test_llama3_resume_then_rerun(work, bucket3, tool):
    rel = "8b_instruction_tuned/consolidated.00.pth"
    (work / "out/Meta-Llama-3-8B-Instruct").mkdir(parents=True)
    (work / "out/Meta-Llama-3-8B-Instruct/consolidated.00.pth").write_bytes(bucket3.files[rel][:4321])
    bin_dir = only_bin(work, tool)
    result = run_models(work, bucket3, bin_dir, "8B-instruct")
    assert result.returncode == 0, result.stderr
    [req] = bucket3.requested(rel)
    assert req["range"] == "bytes=4321-" and req["status"] == 206
    assert_downloaded(bucket3, work / "out", ["8B-instruct"])
    bucket3.requests.clear()
    result = run_models(work, bucket3, bin_dir, "8B-instruct")
    assert result.returncode == 0, result.stderr
    assert len(bucket3.requests) == 6 and all(r["status"] == 416 for r in bucket3.requests)


@needs_downloader
def test_llama3_missing_file_names_the_family(work, bucket3):
    del bucket3.files["8b_pre_trained/params.json"]
    result = run_models(work, bucket3, any_bin(work), "8B")
    assert_error(result, "HTTP 404 Not Found: 8b_pre_trained/params.json is not at", "the URL is for Llama 3")


# ----------------------------------------------------------------- family --


@pytest.mark.parametrize(
    "models, why",
    [
        ("70B", "'70B' exists in both Llama 2 and Llama 3"),
        ("70b,70B", "'70b', '70B' exists in both Llama 2 and Llama 3"),
        ("", "an empty list means all models of one family"),
    ],
)
def test_family_ambiguity_refused_without_a_prompt(work, bucket, models, why):
    result = run_models(work, bucket, any_bin(work), models)
    assert result.stderr == (
        f"error: cannot tell the Llama family: {why}; set LLAMA_FAMILY=2 or LLAMA_FAMILY=3 to match the presigned URL\n"
    )
    assert bucket.requests == []
    assert not (work / "out").exists()


@needs_downloader
@pytest.mark.parametrize(
    "family, models, expected",
    [
        ("2", "70B", ["70B"]),
        ("3", "70B", ["70B"]),
        (" 3 ", "", ["8B", "8B-instruct", "70B", "70B-instruct"]),
    ],
)
def test_family_chosen_by_env(work, bucket, bucket3, family, models, expected):
    served = bucket if family.strip() == "2" else bucket3
    result = run_models(work, served, any_bin(work), models, LLAMA_FAMILY=family)
    assert result.returncode == 0, result.stderr
    assert "Llama family" not in result.stdout
    assert_downloaded(served, work / "out", expected)


def test_family_env_must_match_the_names(work, bucket3):
    result = run_models(work, bucket3, any_bin(work), "70B,7B-chat", LLAMA_FAMILY="3")
    assert_error(
        result, "'7B-chat' is a Llama 2 model but LLAMA_FAMILY=3;", "set LLAMA_FAMILY=2 if the URL is for Llama 2"
    )
    result = run_models(work, bucket3, any_bin(work / "b"), "8B", LLAMA_FAMILY="2")
    assert_error(result, "'8B' is a Llama 3 model but LLAMA_FAMILY=2;")
    # A bad value is refused before anything is asked.
    result = run(work, any_bin(work / "c"), {"LLAMA_FAMILY": "3.1"}, stdin="x\n", tty=True)
    assert result.stderr == (
        "error: LLAMA_FAMILY must be 2 (Llama 2) or 3 (Llama 3), got '3.1'; unset it to let the model names decide\n"
    )
    assert bucket3.requests == []


def test_mixed_families_refused(work, bucket):
    result = run_models(work, bucket, any_bin(work), "7B,8B-instruct,13B-chat")
    assert_error(result, "mixes Llama 2 ('7B', '13B-chat') and Llama 3 ('8B-instruct')", "one family")
    assert bucket.requests == []


@needs_downloader
def test_family_asked_after_the_model_list(work, bucket3):
    result = run(work, any_bin(work), {"TARGET_FOLDER": "out"}, stdin=f"{bucket3.url}\n70B\n3\n")
    assert result.returncode == 0, result.stderr
    assert_downloaded(bucket3, work / "out", ["70B"])


def test_family_answer_must_be_2_or_3(work, bucket):
    result = run(work, any_bin(work), stdin=f"{bucket.url}\n70B\n")
    assert_error(
        result, "no Llama family given ('70B' exists in both Llama 2 and Llama 3)", "answer 2 or 3, or set LLAMA_FAMILY"
    )
    result = run(work, any_bin(work / "b"), stdin=f"{bucket.url}\n\nllama\n")
    assert_error(result, "the Llama family must be 2 or 3, got 'llama'")
    assert bucket.requests == []


@needs_downloader
def test_family_asked_at_a_terminal(work, bucket):
    result = run(
        work,
        any_bin(work),
        {"PRESIGNED_URL": bucket.url, "MODEL_SIZE": "70B", "TARGET_FOLDER": "out"},
        stdin="2\n",
        tty=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("Which family is the URL for ('70B' exists in both Llama 2 and Llama 3)? Enter 2 or 3: ")
    assert_downloaded(bucket, work / "out", ["70B"])


# ---------------------------------------------------- newcomer usability --


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(work, flag):
    # A terminal on stdin: any question would show its prompt on stderr.
    result = run(work, any_bin(work), stdin="\n\n", args=[flag], tty=True)
    assert result.returncode == 0
    assert result.stderr == ""
    out = result.stdout
    assert out.startswith("Usage: ./download.sh [-h | --help]\n")
    for needle in [
        "Llama 2: 7B,13B,70B,7B-chat,13B-chat,70B-chat",
        "Llama 3: 8B,8B-instruct,70B,70B-instruct",
        "Meta-Llama-3-8B/",
        "llama-2-7b/",
        "PRESIGNED_URL ",
        "MODEL_SIZE ",
        "LLAMA_FAMILY ",
        "TARGET_FOLDER ",
        "LLAMA_DOWNLOAD_RETRIES ",
        "LLAMA_DOWNLOAD_RETRY_DELAY ",
        "70B exists in both",
        "LLAMA_FAMILY=2 or LLAMA_FAMILY=3 decides it",
        "MODEL_SIZE=7B,7B-chat ./download.sh",
        "MODEL_SIZE=8B,8B-instruct ./download.sh",
        "LLAMA_FAMILY=3 MODEL_SIZE=70B ./download.sh",
    ]:
        assert needle in out, needle
    assert max(len(line) for line in out.splitlines()) <= 80
    assert not list(work.glob("LICENSE*"))


def test_header_points_to_existing_docs():
    header = SCRIPT.read_text().split("set -euo pipefail")[0]
    assert "docs/" not in header
    assert "./download.sh --help" in header and "README.md" in header
    assert "## Downloading the weights" in (REPO / "README.md").read_text()


def test_unexpected_argument(work):
    result = run(work, any_bin(work), args=["7B"])
    assert result.stderr == (
        "error: unexpected argument '7B'; the only option is --help "
        "(answers come from prompts or environment variables)\n"
    )


@pytest.mark.parametrize("typed", ["\n7B\n", "   \n7B\n"])
def test_empty_url_rejected_before_the_model_list(work, typed):
    result = run(work, any_bin(work), stdin=typed, tty=True)
    assert result.returncode == 1
    assert result.stderr == (
        "Enter the URL from the e-mail: error: no presigned URL given: set PRESIGNED_URL "
        "or paste the URL from Meta's e-mail when asked\n"
    )


def test_model_prompt_lists_both_families_or_the_chosen_one(work):
    result = run(work, any_bin(work), {"PRESIGNED_URL": "https://x/*?a"}, stdin="9B\n", tty=True)
    assert result.stderr.startswith(
        "Enter the models to download, comma-separated (Llama 2: 7B,13B,70B,7B-chat,13B-chat,"
        "70B-chat; Llama 3: 8B,8B-instruct,70B,70B-instruct), or press Enter for all: error: "
    )
    result = run(
        work, any_bin(work / "b"), {"PRESIGNED_URL": "https://x/*?a", "LLAMA_FAMILY": "3"}, stdin="9B\n", tty=True
    )
    assert result.stderr.startswith(
        "Enter the models to download, comma-separated (8B,8B-instruct,70B,70B-instruct), "
        "or press Enter for all: error: "
    )
