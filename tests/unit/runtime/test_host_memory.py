"""llama.host_memory: what a CPU load keeps resident besides the model."""

import platform

from llama.runtime import host_memory


class FakeGlibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_loading_maps_large_blocks_then_settles_the_threshold_and_gives_free_memory_back(build, monkeypatch):
    glibc = FakeGlibc()
    monkeypatch.setattr(host_memory, "_glibc", lambda: glibc)
    build("mha", quantize="int8")
    # 128 KB while loading (every large block its own mapping), glibc's 32 MB ceiling after, then a trim.
    assert glibc.calls == [("mallopt", -3, 131072), ("mallopt", -3, 33554432), ("malloc_trim", 0)]


def test_the_threshold_is_settled_even_when_loading_fails(monkeypatch):
    glibc = FakeGlibc()
    monkeypatch.setattr(host_memory, "_glibc", lambda: glibc)
    try:
        with host_memory.loading_allocations():
            raise KeyError("a load that fails")
    except KeyError:
        pass
    assert [c[0] for c in glibc.calls] == ["mallopt", "mallopt", "malloc_trim"]


def test_glibc_is_found_where_there_is_one():
    assert (host_memory._glibc() is not None) == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
