"""Process-wide runtime settings that make PyTorch faster on a CPU.

glibc's ``malloc`` serves every block above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and
unmaps it on ``free``. A forward pass at detection size allocates many such tensors (a 800x1066 field's
stride-8 FFN activations are 146 MB), and every one of them is faulted in and zeroed by the kernel page by
page again on every call: on the ``paper`` preset that system time was about a sixth of a forward's wall
time. :func:`keep_freed_memory` tells glibc to serve large blocks from its heap and keep freed memory for
the next allocation instead, as a caching allocator does. The process's resident memory then stays near
its peak rather than falling back between calls.

The ``unihema`` command applies it at start-up; code that uses the Python API calls it once itself. Set
``UNIHEMA_KEEP_FREED_MEMORY=0`` to leave the allocator as it is (for example under another ``malloc``
loaded with ``LD_PRELOAD``, such as jemalloc or tcmalloc, which cache freed memory on their own).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

KEEP_FREED_MEMORY_ENV = "UNIHEMA_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Free memory kept at the top of the heap before glibc gives it back (its default is 128 KiB); mallopt takes
# an int, so 2 GiB is the most it can be.
_TRIM_THRESHOLD_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); idempotent.

    Returns:
        True when the settings were applied; False on a platform without glibc's ``mallopt`` (macOS,
        Windows, musl), when ``UNIHEMA_KEEP_FREED_MEMORY`` is ``0``, or when glibc refused a setting.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
