import threading

import torch

from llama.runtime.device_tuning import release_openmp_workers


def test_release_openmp_workers_leaves_parallel_work_correct():
    a, b = torch.randn(256, 512), torch.randn(512, 384)
    expected = a @ b
    assert isinstance(release_openmp_workers(), bool)
    assert torch.equal(a @ b, expected)  # the calling thread's workers come back on demand
    out = {}
    worker = threading.Thread(target=lambda: out.update(c=a @ b))
    worker.start()
    worker.join()
    assert torch.equal(out["c"], expected)
