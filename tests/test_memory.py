"""gateway/memory.py: the threshold over which glibc maps a buffer of its own, fixed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import sys
from gateway.memory import give_back_large_buffers

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0

if sys.argv[1] == "fixed":
    assert give_back_large_buffers()
first = b"a" * (30 << 20)   # a mail's size, mapped of its own: freed, it raises the
del first                   # dynamic threshold to its size
mail = b"b" * (20 << 20)    # dynamic: from the heap; fixed: mapped of its own
pin = b"c" * 100_000        # a smaller live buffer after it in the heap
del mail
print(rss())
"""


def rss_after(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                         text=True, timeout=120, check=True)
    return int(out.stdout)


def test_a_freed_large_buffer_is_given_back() -> None:
    """With the threshold fixed, the memory of a large value goes back to the system once
    it is freed, also after a buffer of a mail's size was freed before (glibc's dynamic
    threshold then keeps the next ones in the heap, held by whatever lies after them)."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the threshold is glibc's; elsewhere nothing is changed")
    fixed, dynamic = rss_after("fixed"), rss_after("dynamic")
    print(f"RSS once a 20 MB value is freed: {fixed} MB fixed, {dynamic} MB dynamic")
    assert dynamic - fixed >= 15  # the 20 MB value: given back, or kept
