"""Process-level helpers: allocator settings and RSS readings (search_e1.memory), and the filter
that keeps vLLM's C++ start-up notices off the console."""

from __future__ import annotations

import os
import sys

import pytest

from search_e1 import memory
from search_e1.rollout.vllm_compat import stderr_without

glibc = pytest.mark.skipif(memory._glibc() is None, reason="glibc only")


def test_rss_readings_are_consistent():
    rss, peak = memory.rss_gb(), memory.peak_rss_gb()
    assert 0.01 < rss <= peak + 0.01  # a Python process with torch imported holds tens of MB at least


@glibc
def test_release_memory_returns_freed_heap_pages_to_the_os():
    """Many small blocks (served from the heap, never unmapped one by one) freed, then released:
    the RSS falls back by most of what they held."""
    import ctypes

    libc = memory._glibc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    memory.release_memory()
    base = memory.rss_gb()
    blocks = [libc.malloc(64 * 1024) for _ in range(4000)]  # 256 MiB in 64 KiB blocks
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    held = memory.rss_gb()
    assert held - base > 0.2
    for b in blocks:
        libc.free(b)
    memory.release_memory()
    assert memory.rss_gb() - base < 0.05


@glibc
def test_mmap_threshold_is_set_only_for_a_positive_size():
    assert not memory.set_mmap_threshold(0)
    assert memory.set_mmap_threshold(32)  # glibc's own upper bound of the adaptive threshold


def test_stderr_filter_drops_matching_lines_of_any_writer(capfd):
    """Lines written to file descriptor 2 (as C++ code does) pass in their order, except those
    containing a filtered prefix; Python's sys.stderr still reaches the console."""
    with stderr_without(("Warning: NUMA binding:",)):
        os.write(2, b"first\n[W utils.cpp:68] Warning: NUMA binding: Using MEMBIND policy\nsecond\n")
        print("from python", file=sys.stderr)
    err = capfd.readouterr().err
    assert "NUMA" not in err and "from python" in err
    assert "first\nsecond\n" in err


def test_stderr_filter_passes_everything_back_when_the_body_raises(capfd):
    with pytest.raises(RuntimeError), stderr_without(("skip me",)):
        os.write(2, b"skip me\nkeep me\n")
        raise RuntimeError("engine failed")
    assert capfd.readouterr().err == "keep me\n"
