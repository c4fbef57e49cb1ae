"""How the gateway process asks the C allocator for large buffers.

A gateway handles values as large as a mail (25 MB and more) a few at a time.  glibc's
malloc serves a buffer over its mmap threshold with a mapping of its own, returned to the
system when freed; but the threshold is dynamic: once such a buffer is freed, it rises to
that size (up to 32 MB), and later buffers of a mail's size come from the heap, where what
is freed stays in the process (and fragments it).  The gateway fixes the threshold at
``LARGE`` bytes, so that memory taken for one large mail is given back once it is handled.
Elsewhere than glibc (musl, macOS) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE = 1024 * 1024


def give_back_large_buffers(threshold: int = LARGE) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
        gnu = getattr(libc, "gnu_get_libc_version", None)
    except OSError:
        return False
    if mallopt is None or gnu is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
