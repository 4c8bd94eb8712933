"""Loading costs about one checkpoint of memory: CPU weights are the file, mapped, never copied."""

import subprocess
import sys
from pathlib import Path

import pytest

from llama.model import ModelArgs
from llama.testing.synthetic import TINY_VOCAB as VOCAB_SIZE
from llama.testing.synthetic import params_dict, random_state
from llama.weights.meta import save_checkpoint
from support.helpers import REPO

linux_proc = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux /proc")

PEAK_RSS_GROWTH = r"""
import sys
from pathlib import Path
from llama import Llama

def rss_and_peak_kb():
    f = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(f["VmRSS"].split()[0]), int(f["VmHWM"].split()[0])

def build_and_generate(ckpt):
    llama = Llama.build(ckpt, sys.argv[3], max_seq_len=8, max_batch_size=1, device="cpu", dtype="float32")
    llama.generate([[1, 5, 6]], max_gen_len=2, temperature=0)  # touches every weight

build_and_generate(sys.argv[2])  # a tiny model first: process group, kernels, threads are set up once
Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
rss, _ = rss_and_peak_kb()
build_and_generate(sys.argv[1])
print("GROWTH", (rss_and_peak_kb()[1] - rss) * 1024)
"""


def file_mappings(path: Path):
    """(start, end) address ranges where `path` is mapped into this process."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            out.append((start, end))
    return out


@linux_proc
def test_cpu_float32_weights_live_in_the_memory_mapped_checkpoint_file(build, make_ckpt):
    llama = build("gqa", 1)
    ranges = file_mappings(make_ckpt("gqa", 1) / "consolidated.00.pth")
    assert ranges
    for name, param in llama.model.named_parameters():
        assert any(start <= param.data_ptr() < end for start, end in ranges), name


@pytest.mark.slow
@linux_proc
def test_peak_memory_while_loading_and_generating_is_about_one_checkpoint(tmp_path, tokenizer_path, make_ckpt):
    args = ModelArgs(dim=256, n_layers=16, n_heads=4, multiple_of=32, vocab_size=VOCAB_SIZE)
    ckpt = save_checkpoint(random_state(args), params_dict(args), tmp_path / "ckpt")
    size = (ckpt / "consolidated.00.pth").stat().st_size
    assert size > 50e6
    repo = REPO
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_GROWTH, str(ckpt), str(make_ckpt("mha")), str(tokenizer_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=repo,
        env={"PYTHONPATH": str(repo), "PATH": ""},
    ).stdout
    growth = int(next(line for line in out.splitlines() if line.startswith("GROWTH")).split()[1])
    assert growth <= 1.3 * size  # a build that initialises, then copies, the weights needs about 2x
