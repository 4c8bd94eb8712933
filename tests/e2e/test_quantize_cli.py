"""`python -m llama.quantize SRC DST --int8|--int4` run as a process: what it writes, that it never
loads the generator, and its refusal of two methods at once."""

import subprocess
import sys

from support.helpers import REPO, subprocess_env


def test_the_command_line_tool_writes_the_checkpoint_without_loading_the_generator(make_ckpt, tmp_path):
    code = (
        "import runpy, sys; sys.argv = ['llama.quantize'] + sys.argv[1:]; "
        "runpy.run_module('llama.quantize', run_name='__main__'); print('llama.generation' in sys.modules)"
    )
    cmd = [sys.executable, "-c", code, str(make_ckpt("gqa", 2)), str(tmp_path / "q"), "--int8"]
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == [f"wrote 2 int8 shard(s) and params.json to {tmp_path / 'q'}", "False"]
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "consolidated.00.pth",
        "consolidated.01.pth",
        "params.json",
    ]
    again = subprocess.run(
        cmd[:3] + [str(make_ckpt("gqa", 2)), str(tmp_path / "r"), "--int8", "--int4"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1 and again.stderr.strip() == "error: choose one quantization: --int8 or --int4"
