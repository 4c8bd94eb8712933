"""llama.backend: which process group, device and dtype each machine gets, and the errors for impossible choices."""

import subprocess
import sys
from datetime import timedelta

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llama.errors import BackendError, ConfigError
from llama.runtime.backend import COLLECTIVE_TIMEOUT, Probe, select
from support.helpers import subprocess_env

CPU = Probe(cuda_count=0, nccl=False, mps=False)
MAC = Probe(cuda_count=0, nccl=False, mps=True)
LINUX_GPUS = Probe(cuda_count=2, nccl=True, mps=False, cuda_bf16=True)
WINDOWS_GPUS = Probe(cuda_count=2, nccl=False, mps=False, cuda_bf16=True)  # Windows builds ship no NCCL
OLD_GPU = Probe(cuda_count=1, nccl=True, mps=False, cuda_bf16=False)
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SINGLE = "one process, no launcher -> private single-rank gloo group (no TCP store)"


@pytest.mark.parametrize(
    "probe, env, kwargs, expected",
    [
        (CPU, {}, {}, f"backend=gloo device=cpu dtype=float32 world_size=1 rank=0 (no CUDA or MPS -> cpu; {SINGLE})"),
        (MAC, {}, {}, f"backend=gloo device=mps dtype=float16 world_size=1 rank=0 (Apple MPS -> mps; {SINGLE})"),
        (
            LINUX_GPUS,
            {},
            {},
            f"backend=gloo device=cuda:0 dtype=bfloat16 world_size=1 rank=0 (CUDA -> cuda:0; {SINGLE})",
        ),
        (OLD_GPU, {}, {}, f"backend=gloo device=cuda:0 dtype=float16 world_size=1 rank=0 (CUDA -> cuda:0; {SINGLE})"),
        (
            LINUX_GPUS,
            TORCHRUN,
            {},
            "backend=nccl device=cuda:1 dtype=bfloat16 world_size=2 rank=1 (CUDA -> cuda:1; CUDA with NCCL -> nccl)",
        ),
        (
            WINDOWS_GPUS,
            TORCHRUN,
            {},
            "backend=gloo device=cuda:1 dtype=bfloat16 world_size=2 rank=1 "
            "(CUDA -> cuda:1; NCCL is not available in this torch build -> gloo)",
        ),
        (
            CPU,
            TORCHRUN,
            {},
            "backend=gloo device=cpu dtype=float32 world_size=2 rank=1 (no CUDA or MPS -> cpu; no CUDA -> gloo)",
        ),
        (
            MAC,
            TORCHRUN,
            {},
            "backend=gloo device=cpu dtype=float32 world_size=2 rank=1 "
            "(MPS serves one process, 2 were launched -> cpu; no CUDA -> gloo)",
        ),
        (
            MAC,
            {"RANK": "0", "WORLD_SIZE": "1"},
            {},
            "backend=gloo device=mps dtype=float16 world_size=1 rank=0 (Apple MPS -> mps; no CUDA -> gloo)",
        ),
        (
            LINUX_GPUS,
            {**TORCHRUN, "LLAMA_DEVICE": "cpu"},
            {},
            "backend=gloo device=cpu dtype=float32 world_size=2 rank=1 "
            "(LLAMA_DEVICE=cpu; device cpu, not CUDA -> gloo)",
        ),
        (
            LINUX_GPUS,
            {**TORCHRUN, "LLAMA_BACKEND": "gloo", "LLAMA_DTYPE": "fp16"},
            {},
            "backend=gloo device=cuda:1 dtype=float16 world_size=2 rank=1 (CUDA -> cuda:1; LLAMA_BACKEND=gloo)",
        ),
        (
            MAC,
            {"LLAMA_DEVICE": "mps"},
            {"device": "cpu", "dtype": torch.bfloat16},  # the argument beats the env
            f"backend=gloo device=cpu dtype=bfloat16 world_size=1 rank=0 (device='cpu'; {SINGLE})",
        ),
        (
            LINUX_GPUS,
            TORCHRUN,
            {"device": "cuda"},  # a bare "cuda" means this rank's own GPU
            "backend=nccl device=cuda:1 dtype=bfloat16 world_size=2 rank=1 (device='cuda'; CUDA with NCCL -> nccl)",
        ),
        (
            Probe(cuda_count=0, nccl=False, mps=False, group=("gloo", 3, 4)),
            {},
            {},
            "backend=gloo device=cpu dtype=float32 world_size=4 rank=3 "
            "(no CUDA or MPS -> cpu; process group gloo already initialized by the caller)",
        ),
    ],
    ids=[
        "cpu",
        "mac",
        "gpu-single",
        "gpu-old",
        "torchrun-nccl",
        "torchrun-windows",
        "torchrun-cpu",
        "torchrun-mac",
        "torchrun-mac-1proc",
        "env-device",
        "env-backend-dtype",
        "arg-beats-env",
        "bare-cuda",
        "existing-group",
    ],
)
def test_select_decides_backend_device_dtype_and_says_why(probe, env, kwargs, expected):
    assert select(env=env, probe=probe, **kwargs).describe() == expected


def test_single_process_needs_no_launcher_and_torchrun_is_recognised():
    alone = select(env={}, probe=CPU)
    assert (alone.launched, alone.world_size, alone.rank) == (False, 1, 0)
    launched = select(env={"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}, probe=CPU)
    assert (launched.launched, launched.world_size, launched.rank, launched.local_rank) == (True, 4, 2, 0)


@pytest.mark.parametrize(
    "probe, env, kwargs, error, message",
    [
        (
            MAC,
            {},
            {"backend": "nccl"},
            BackendError,
            "backend 'nccl' (from backend argument) is not available: this torch build has no NCCL (macOS and Windows "
            "builds never do); use backend gloo, or leave it unset",
        ),
        (
            LINUX_GPUS,
            {"LLAMA_BACKEND": "nccl"},
            {"device": "cpu"},
            BackendError,
            "backend 'nccl' (from LLAMA_BACKEND) only moves CUDA tensors, but the device is cpu; use backend gloo, "
            "or leave it unset",
        ),
        (
            CPU,
            {},
            {"device": "cuda"},
            BackendError,
            "device 'cuda' (from device argument) requested, but CUDA is not available in this torch build or on this "
            "machine; use device cpu (or mps on Apple silicon)",
        ),
        (
            CPU,
            {"LLAMA_DEVICE": "mps"},
            {},
            BackendError,
            "device 'mps' (from LLAMA_DEVICE) requested, but Apple MPS is not available here; use device cpu",
        ),
        (
            MAC,
            TORCHRUN,
            {"device": "mps"},
            BackendError,
            "device 'mps' (from device argument) runs one process, but 2 were launched; run without torchrun, or use "
            "device cpu for a multi-process run over gloo",
        ),
        (
            LINUX_GPUS,
            {},
            {"device": "cuda:5"},
            BackendError,
            "device 'cuda:5' (from device argument) does not exist: this machine has 2 GPUs (cuda:0 .. cuda:1)",
        ),
        (
            LINUX_GPUS,
            {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "3"},
            {},
            BackendError,
            "LOCAL_RANK=3 needs GPU cuda:3, but this machine has 2; launch at most 2 processes per node "
            "(--nproc_per_node), or use device cpu",
        ),
        (
            OLD_GPU,
            {},
            {"dtype": "bf16"},
            BackendError,
            "bfloat16 requested but this GPU does not support it; use dtype float16",
        ),
        (
            CPU,
            {},
            {"backend": "mpi"},
            ConfigError,
            "unknown backend 'mpi' (from backend argument); use one of nccl, gloo",
        ),
        (
            CPU,
            {},
            {"device": "tpu"},
            ConfigError,
            "unknown device 'tpu' (from device argument); use cpu, cuda, cuda:N or mps",
        ),
        (
            CPU,
            {},
            {"dtype": "float64"},
            ConfigError,
            "unknown dtype 'float64'; use one of float32, bfloat16, float16 (or fp32, bf16, fp16)",
        ),
        (
            CPU,
            {"RANK": "2", "WORLD_SIZE": "2"},
            {},
            ConfigError,
            "inconsistent launcher environment: RANK=2 LOCAL_RANK=0 WORLD_SIZE=2; start the script with torchrun, "
            "or unset these variables for a single process",
        ),
        (CPU, {"RANK": "x", "WORLD_SIZE": "2"}, {}, ConfigError, "environment variable RANK='x' is not an integer"),
        (
            CPU,
            {"LLAMA_COLLECTIVE_TIMEOUT": "soon"},
            {},
            ConfigError,
            "environment variable LLAMA_COLLECTIVE_TIMEOUT='soon' must be a number of seconds > 0, "
            "e.g. LLAMA_COLLECTIVE_TIMEOUT=60",
        ),
        (
            CPU,
            {"LLAMA_LOAD_TIMEOUT": "0"},
            {},
            ConfigError,
            "environment variable LLAMA_LOAD_TIMEOUT='0' must be a number of seconds > 0, e.g. LLAMA_LOAD_TIMEOUT=60",
        ),
        (
            Probe(cuda_count=2, nccl=True, mps=False, group=("gloo", 0, 2)),
            {},
            {"backend": "nccl"},
            BackendError,
            "backend 'nccl' (from backend argument) requested, but this process already has a gloo process group; "
            "leave the backend unset",
        ),
    ],
    ids=[
        "nccl-on-mac",
        "nccl-on-cpu",
        "cuda-missing",
        "mps-missing",
        "mps-multiprocess",
        "no-such-gpu",
        "too-many-ranks",
        "bf16-old-gpu",
        "bad-backend",
        "bad-device",
        "bad-dtype",
        "bad-rank",
        "rank-not-int",
        "bad-timeout",
        "zero-timeout",
        "group-mismatch",
    ],
)
def test_impossible_choices_raise_clear_errors(probe, env, kwargs, error, message):
    with pytest.raises(error) as info:
        select(env=env, probe=probe, **kwargs)
    assert str(info.value) == message


def test_timeouts_come_from_the_environment():
    assert select(env={}, probe=CPU).timeout == COLLECTIVE_TIMEOUT == timedelta(seconds=30)
    rt = select(env={"LLAMA_COLLECTIVE_TIMEOUT": "2.5", "LLAMA_LOAD_TIMEOUT": "600"}, probe=CPU)
    assert (rt.timeout, rt.load_timeout) == (timedelta(seconds=2.5), timedelta(seconds=600))


NO_TCP_STORE = """
import torch, torch.distributed as dist, torch.distributed.rendezvous as rdzv

def refuse(*args, **kwargs):
    raise SystemExit("a TCP store or URL rendezvous was opened")

dist.TCPStore = rdzv.TCPStore = rdzv.rendezvous = dist.distributed_c10d.rendezvous = refuse
from llama.runtime.backend import select
from llama.runtime.distributed import init_distributed
rt = select()
init_distributed(rt)
t = torch.ones(2)
dist.all_reduce(t)
print(rt.describe(), dist.get_world_size(), t.tolist())
"""


@pytest.mark.slow
def test_single_process_opens_no_tcp_store_and_needs_no_master_addr():
    done = subprocess.run(
        [sys.executable, "-c", NO_TCP_STORE], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f"backend=gloo device=cpu dtype=float32 world_size=1 rank=0 (no CUDA or MPS -> cpu; {SINGLE}) 1 [1.0, 1.0]"
    )


class _RecordOutputs(TorchDispatchMode):
    """Remembers the dtype and device of every tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.dtypes, self.devices = set(), set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.dtypes.add(t.dtype)
                self.devices.add(t.device.type)
        return out


@pytest.mark.parametrize("config, n_shards", [("gqa", 2), ("mha", 1)])
def test_mps_code_path_makes_no_complex_or_float64_tensors(build, one_thread, config, n_shards):
    """What MPS runs (float16, one process), forced on the CPU: MPS has no complex or float64 dtypes."""
    assert select(env={}, probe=MAC).dtype == torch.float16
    record = _RecordOutputs()
    with record:
        llama = build(config, n_shards, dtype="float16")
        prompts = [llama.tokenizer.encode(p, bos=True, eos=False) for p in ("The tide", "A brief message for")]
        greedy, _ = llama.generate(prompts, max_gen_len=4, temperature=0, logprobs=True, echo=True)
        sampled, _ = llama.generate(prompts, max_gen_len=4, logprobs=True)
    assert all(len(row) >= 4 for row in sampled)
    assert not {d for d in record.dtypes if d.is_complex or d == torch.float64}, sorted(map(str, record.dtypes))
    assert torch.float16 in record.dtypes
    assert record.devices <= {"cpu", "meta"}
