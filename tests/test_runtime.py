"""keep_freed_memory: large tensors reuse freed heap memory instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from unihema import runtime

# Allocates and frees a 64 MiB tensor (above glibc's largest mmap threshold) twenty times and prints the
# minor page faults of the last ten (glibc's heap takes a few rounds to grow to its steady size).
_PROBE = textwrap.dedent(
    """
    import resource, sys
    import torch
    from unihema.runtime import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    for _ in range(10):
        torch.ones(16 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        torch.ones(16 * 2**20)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True, env=env, timeout=120
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_large_tensors_stop_faulting_in_pages():
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied
    # 10 x 64 MiB of 4 KiB pages is about 164k faults without reuse (fewer with transparent huge pages).
    assert default > 1000
    assert kept * 20 < default


def test_environment_variable_turns_it_off(monkeypatch):
    monkeypatch.setenv(runtime.KEEP_FREED_MEMORY_ENV, "0")
    assert runtime.keep_freed_memory() is False
