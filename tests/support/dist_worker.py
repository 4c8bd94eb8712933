"""Test-only driver for tests/e2e/test_distributed.py (run under torchrun).

Generates PROMPTS greedily and with default sampling and prints the tokens as one JSON line on
rank 0. With `--fail_rank R --fail_how raise|kill|hang`, rank R then fails at the `--fail_step`-th
forward call of one more generation, to check that no rank hangs and the user learns why; it
says on stderr when (time.time()) it fails.

Several models from one launch (each launch costs seconds): `--quantize int8,int4` builds the
checkpoint once per method, quantized while loading, and `--also DIR,DIR` then builds more
checkpoints as stored; one JSON line per model, in that order.
"""

import json
import os
import signal
import sys
import time

from llama import Llama
from llama.cli.run import run

if __package__:  # imported by the tests as support.dist_worker
    from support.helpers import PROMPTS
else:  # run by path under torchrun: helpers.py lies beside it
    from helpers import PROMPTS


def generations(generator: Llama, max_gen_len: int = 6) -> dict:
    prompts = [generator.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    greedy, _ = generator.generate(prompts, max_gen_len, temperature=0)
    sampled, _ = generator.generate(prompts, max_gen_len)
    return {"greedy": greedy, "sampled": sampled}


def _fail_at(generator: Llama, step: int, how: str) -> None:
    forward = generator.model.forward
    calls = [0]

    def failing_forward(tokens, start_pos, last_only=False):
        calls[0] += 1
        if calls[0] == step:
            print(f"failing ({how}) at {time.time()}", file=sys.stderr, flush=True)
            if how == "raise":
                raise RuntimeError(f"injected failure at forward call {step}")
            if how == "kill":  # what the kernel's OOM killer does
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "hang":
                time.sleep(3600)
        return forward(tokens, start_pos, last_only)

    generator.model.forward = failing_forward


def _listed(value) -> list:
    """A comma-separated flag as a list (fire hands `a,b` over as a tuple, a path list as one string)."""
    if not value:
        return []
    return value.split(",") if isinstance(value, str) else [str(v) for v in value]


def main(
    ckpt_dir: str,
    tokenizer_path: str,
    fail_rank: int = -1,
    fail_step: int = 3,
    fail_how: str = "raise",
    quantize="",
    also="",
):
    builds = [(ckpt_dir, method) for method in _listed(quantize) or [None]] + [(d, None) for d in _listed(also)]
    for directory, method in builds:
        generator = Llama.build(directory, tokenizer_path, max_seq_len=64, max_batch_size=len(PROMPTS), quantize=method)
        result = generations(generator)  # on every rank: each forward step is collective
        if generator.is_main:
            print(json.dumps(result), flush=True)
    if fail_rank >= 0:
        if int(os.environ.get("RANK", "0")) == fail_rank:
            _fail_at(generator, fail_step, fail_how)
        generations(generator)


if __name__ == "__main__":
    run(main)
