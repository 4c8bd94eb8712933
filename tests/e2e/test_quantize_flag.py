"""Every command takes `--quantize`: both example scripts (one streamed, one not) and the chat REPL,
run as a user runs them, print what `Llama.build(..., quantize="int4")` generates."""

import subprocess
import sys

from llama.cli.frontend import SEPARATOR
from support.helpers import REPO, subprocess_env

MAYONNAISE = [{"role": "user", "content": "what is the recipe of mayonnaise?"}]  # example_chat_completion.py's first


def _start(args):
    return subprocess.Popen(
        [sys.executable, *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
    )


def _finish(proc, stdin=""):
    out, err = proc.communicate(stdin, timeout=180)
    assert proc.returncode == 0, err
    runtime = [line for line in err.splitlines() if line.startswith("runtime: ")]
    assert len(runtime) == 1 and ") quantize=int4 decode=" in runtime[0], err
    return out


def _answers(out: str, prefix: str) -> dict:
    """{what an example prints before an answer: the answer} from its stdout: after the `Loaded in`
    line, `{prompt}\n{prefix}{answer}\n` then SEPARATOR and a newline, for each prompt."""
    printed = out.split("\n", 1)[1]
    assert printed.endswith(SEPARATOR + "\n")
    blocks = printed.split(SEPARATOR + "\n")[:-1]
    return dict(block[:-1].split(f"\n{prefix}", 1) for block in blocks)


def test_the_examples_and_the_chat_repl_run_int4(build, make_ckpt, tokenizer_path):
    ckpt = ("--ckpt_dir", make_ckpt("mha"), "--tokenizer_path", tokenizer_path, "--temperature", 0)
    # Started together: each mostly imports torch.
    text = _start([REPO / "example_text_completion.py", *ckpt, "--max_gen_len", 8, "--quantize", "int4"])
    chat = _start(
        [
            REPO / "example_chat_completion.py",
            *ckpt,
            "--max_gen_len",
            4,
            "--max_seq_len",
            1024,
            "--quantize",
            "int4",
            "--stream",
        ]
    )
    repl = _start(["-m", "llama.chat", *ckpt, "--max_seq_len", 64, "--max_gen_len", 8, "--quantize", "int4"])
    text_out, chat_out, repl_out = _finish(text), _finish(chat), _finish(repl, MAYONNAISE[0]["content"] + "\n")

    prompts = _answers(text_out, "> ")
    assert len(prompts) == 4
    gen = build("mha", max_seq_len=128, max_batch_size=4, quantize="int4")
    results = gen.text_completion(list(prompts), temperature=0, max_gen_len=8)
    assert list(prompts.values()) == [r["generation"] for r in results]

    gen = build("mha", max_seq_len=1024, max_batch_size=4, quantize="int4")
    answer = gen.chat_completion([MAYONNAISE], temperature=0, max_gen_len=4)[0]["generation"]["content"]
    assert _answers(chat_out, "> Assistant: ")[f"User: {MAYONNAISE[0]['content']}\n"] == answer

    gen = build("mha", max_seq_len=64, max_batch_size=1, quantize="int4")
    answer = gen.chat_completion([MAYONNAISE], temperature=0, max_gen_len=8)[0]["generation"]["content"]
    assert repl_out.split("\n", 1)[1] == f"User: {MAYONNAISE[0]['content']}\nAssistant: {answer}\n"  # turn echoed
