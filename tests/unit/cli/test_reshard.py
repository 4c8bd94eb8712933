"""Resharding: a k-shard checkpoint loaded by n ranks, and the offline `python -m llama.reshard` tool."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama import Llama
from llama.cli.reshard import FLAGS, reshard
from llama.cli.reshard import main as reshard_main
from llama.cli.run import run
from llama.errors import ConfigError
from llama.layers.plan import LLAMA2_PLAN, LLAMA3_PLAN
from llama.weights import meta as checkpoint
from llama.weights.meta import IGNORED_KEYS, check_parallelism, load_rank_state, split_state
from support.helpers import PROMPTS, subprocess_env
from support.llama3_tokenizer import llama3_tokenizer_path

pytestmark = pytest.mark.usefixtures("one_thread")


LOAD_CASES = [("mha", k, n) for k in (1, 2, 4) for n in (1, 2, 4)] + [("gqa", k, n) for k in (1, 2) for n in (1, 2)]


@pytest.mark.parametrize("config, k, n", LOAD_CASES, ids=[f"{c}-{k}to{n}" for c, k, n in LOAD_CASES])
def test_each_rank_loads_exactly_its_split_of_the_full_weights(make_ckpt, full_state, config, k, n):
    shards = checkpoint.find_shards(make_ckpt(config, k))
    expected = split_state(full_state(config), n, LLAMA2_PLAN)
    for rank in range(n):
        got = load_rank_state(shards, n, rank, LLAMA2_PLAN)
        want = {key: t for key, t in expected[rank].items() if key not in IGNORED_KEYS}
        assert list(got) == list(want)
        for key, tensor in want.items():
            assert torch.equal(got[key], tensor), f"rank {rank}: {key}"


@pytest.mark.parametrize(
    "k, n, rank, reads",
    [
        (4, 2, 1, ["consolidated.02.pth", "consolidated.03.pth"]),
        (1, 4, 3, ["consolidated.00.pth"]),
        (2, 4, 3, ["consolidated.01.pth"]),
        (4, 4, 2, ["consolidated.02.pth"]),
    ],
)
def test_a_rank_reads_only_the_shards_it_needs(make_ckpt, monkeypatch, k, n, rank, reads):
    opened = []
    real = checkpoint.load_shard
    monkeypatch.setattr(checkpoint, "load_shard", lambda path: opened.append(path.name) or real(path))
    load_rank_state(checkpoint.find_shards(make_ckpt("mha", k)), n, rank, LLAMA2_PLAN)
    assert opened == reads


@pytest.mark.parametrize(
    "args, message",
    [
        (
            (8, 3, 64, 8),
            "a checkpoint with 8 shards cannot run on 3 model-parallel processes: one of 8 and 3 must "
            "divide the other; valid process counts: [1, 2, 4, 8] (torchrun --nproc_per_node N, or "
            "python -m llama.reshard to change the shard count)",
        ),
        (
            (2, 4, 8, 2),
            "a checkpoint with 2 shards cannot run on 4 model-parallel processes: n_heads=8 and "
            "n_kv_heads=2 must both be divisible by 4; valid process counts: [1, 2] (torchrun "
            "--nproc_per_node N, or python -m llama.reshard to change the shard count)",
        ),
        (
            (1, 16, 64, 8),
            "a checkpoint with 1 shards cannot run on 16 model-parallel processes: n_heads=64 and "
            "n_kv_heads=8 must both be divisible by 16; valid process counts: [1, 2, 4, 8] (torchrun "
            "--nproc_per_node N, or python -m llama.reshard to change the shard count)",
        ),
    ],
)
def test_impossible_process_counts_name_both_numbers_and_the_valid_ones(args, message):
    with pytest.raises(ConfigError) as info:
        check_parallelism(*args)
    assert str(info.value) == message


_GENERATED = {}


def _greedy_and_sampled(ckpt_dir, tokenizer_path):
    key = (str(ckpt_dir), str(tokenizer_path))
    if key not in _GENERATED:
        _GENERATED[key] = _generate(ckpt_dir, tokenizer_path)
    return _GENERATED[key]


def _generate(ckpt_dir, tokenizer_path):
    llama = Llama.build(str(ckpt_dir), str(tokenizer_path), 64, len(PROMPTS), device="cpu", dtype="float32")
    prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in PROMPTS]
    return llama.generate(prompts, 6, temperature=0)[0], llama.generate(prompts, 6)[0]


def _check_written(dst: Path, src: Path, full: dict, n: int, plan=LLAMA2_PLAN) -> None:
    tokenizer = ["tokenizer.model"] if (src / "tokenizer.model").is_file() else []  # copied along when there is one
    assert sorted(p.name for p in dst.iterdir()) == [f"consolidated.{i:02d}.pth" for i in range(n)] + [
        "params.json",
        *tokenizer,
    ]
    assert (dst / "params.json").read_bytes() == (src / "params.json").read_bytes()
    source_keys = list(torch.load(src / "consolidated.00.pth", weights_only=True))
    for i, want in enumerate(split_state(full, n, plan)):
        shard = torch.load(dst / f"consolidated.{i:02d}.pth", weights_only=True)
        assert list(shard) == source_keys  # Meta's key names and order, rope.freqs included
        for key, tensor in want.items():
            assert torch.equal(shard[key], tensor), f"shard {i}: {key}"
            # a slice saved as a view would drag the whole source tensor into the file
            assert shard[key].untyped_storage().nbytes() == shard[key].nbytes, key


@pytest.mark.slow
def test_reshard_cli_splits_one_shard_into_two(make_ckpt, full_state, tokenizer_path, tmp_path):
    src, dst = make_ckpt("mha", 1), tmp_path / "two"
    # -X importtime lists every module the run imported, on stderr.
    command = [sys.executable, "-X", "importtime", "-m", "llama.reshard", str(src), str(dst), "--shards", "2"]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote 2 shards and params.json to {dst}\n"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "llama.weights.meta" in imported  # the listing works ...
    generator = {
        "llama.generation",
        "llama.streaming",
        "llama.cli.frontend",
        "fairscale",
        "llama.kernels.native",
    }  # ... and the offline tool needs none
    assert not imported & generator, sorted(m for m in imported if m.startswith("llama"))
    _check_written(dst, src, full_state("mha"), 2)
    assert _greedy_and_sampled(dst, tokenizer_path) == _greedy_and_sampled(src, tokenizer_path)


@pytest.mark.parametrize("config, k, n", [("mha", 2, 1), ("mha", 2, 4), ("gqa", 2, 1), ("gqa", 1, 2)])
def test_reshard_writes_the_split_rules_and_generates_the_same_tokens(
    make_ckpt, full_state, tokenizer_path, tmp_path, config, k, n
):
    src, dst = make_ckpt(config, k), tmp_path / f"{n}-shards"
    assert reshard(src, dst, n) == [dst / f"consolidated.{i:02d}.pth" for i in range(n)]
    _check_written(dst, src, full_state(config), n)
    assert _greedy_and_sampled(dst, tokenizer_path) == _greedy_and_sampled(make_ckpt(config, 1), tokenizer_path)


@pytest.mark.parametrize("k, n", [(1, 2), (2, 1)])
def test_reshard_keeps_llama3s_vocabulary_split(make_ckpt, full_state, tmp_path, k, n):
    src, dst = make_ckpt("llama3.1", k), tmp_path / f"{n}-shards"
    reshard(src, dst, n)
    _check_written(dst, src, full_state("llama3.1"), n, LLAMA3_PLAN)
    emb = torch.load(dst / "consolidated.00.pth", weights_only=True)["tok_embeddings.weight"]
    assert tuple(emb.shape) == (128256 // n, 64)  # rows split, as Meta's Llama 3 shards are
    tok = llama3_tokenizer_path()
    assert _greedy_and_sampled(dst, tok) == _greedy_and_sampled(make_ckpt("llama3.1", 1), tok)


def _cli(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["reshard", *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        run(reshard_main, FLAGS)
    return info.value.code, capsys.readouterr()


def test_a_missing_source_directory_is_named_as_the_tool_calls_it(tmp_path, monkeypatch, capsys):
    code, out = _cli(monkeypatch, capsys, tmp_path / "llama-2-13b", tmp_path / "out", "--shards", 2)
    assert (code, out.out) == (1, "")
    assert out.err == (
        f"error: SRC_DIR '{tmp_path / 'llama-2-13b'}' not found; name the checkpoint folder to reshard (params.json "
        "and consolidated.*.pth, e.g. llama-2-13b/)\n"
    )


def test_reshard_refuses_impossible_counts_before_writing(make_ckpt, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "out"
    code, out = _cli(monkeypatch, capsys, make_ckpt("mha", 4), dst, "--shards", 3)
    assert (code, out.out) == (1, "")
    assert out.err == (
        "error: a checkpoint with 4 shards cannot be resharded into 3: one of 4 and 3 must divide the other; "
        "valid shard counts: [1, 2, 4]\n"
    )
    code, out = _cli(monkeypatch, capsys, make_ckpt("gqa", 2), dst, "--shards", 4)
    assert out.err == (
        "error: a checkpoint with 2 shards cannot be resharded into 4: n_heads=8 and n_kv_heads=2 must both be "
        "divisible by 4; valid shard counts: [1, 2]\n"
    )
    assert not dst.exists()


@pytest.mark.parametrize("shards", [0, "two", 1.5])
def test_reshard_rejects_a_bad_shard_count(make_ckpt, tmp_path, shards):
    with pytest.raises(ConfigError) as info:
        reshard(make_ckpt("mha", 1), tmp_path / "out", shards)
    assert str(info.value) == f"--shards must be a whole number > 0, got {shards!r}; e.g. --shards 2"


def test_reshard_never_mixes_old_and_new_shards(make_ckpt, tmp_path):
    src, dst = make_ckpt("mha", 2), tmp_path / "out"
    reshard(src, dst, 4)
    with pytest.raises(ConfigError) as info:
        reshard(src, dst, 1)
    assert str(info.value) == (
        f"DST_DIR {str(dst)!r} already exists; pass --force to replace it, or choose a new directory"
    )
    reshard(src, dst, 1, force=True)
    assert sorted(p.name for p in dst.glob("*.pth")) == ["consolidated.00.pth"]
    with pytest.raises(ConfigError) as info:
        reshard(src, src, 1)
    assert str(info.value) == (
        f"DST_DIR {str(src)!r} is SRC_DIR {str(src)!r}; write the output to a folder outside the source"
    )
