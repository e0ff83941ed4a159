"""Keep freed memory in the process instead of handing it back to the kernel after every step (glibc).

A CPU training step allocates and frees the same large buffers every time: PTB small's logits and
their gradient are 400 x 10,000 floats, 16 MB each. glibc serves blocks that large with mmap and
returns them with munmap on free, so every step the kernel maps fresh pages and zero-fills each
4 KB page on first touch: thousands of minor page faults a step (results/profile-step.md: 4,993),
booked to whichever operator first writes the buffer. With mmap off and the heap's trim threshold
raised, a freed block stays in the heap and the next step reuses it (694 faults a step in
results/profile-step-kept-memory.md), with the same arithmetic on buffers of the same 64-byte
alignment (PyTorch's CPU allocator asks for it), so the same numbers. The price: memory freed at
the peak of a step stays with the process instead of going back to the system. PyTorch's CPU tuning guide makes the same point
with jemalloc or tcmalloc preloaded; this needs no extra library or LD_PRELOAD.

    RNNREG_MALLOC=default bench run ...   # leave glibc as it is (to measure the difference)
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from collections.abc import Mapping

log = logging.getLogger("benchmark")

# mallopt(3) parameters, from <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO = 1 << 30  # bytes of free memory at the heap's top kept before any goes back to the kernel
ENV = "RNNREG_MALLOC"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set this process's glibc malloc to reuse freed blocks (see the module's text). True when
    set; False where it does not apply (not glibc, or RNNREG_MALLOC=default). Once per process."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice not in ("keep", "default"):
        log.warning("%s=%r: expected `keep` or `default`; leaving malloc as it is", ENV, choice)
        return False
    if choice == "default" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
    except (OSError, AttributeError):  # a glibc that cannot be loaded by this name
        return False
    return _applied


def glibc_tunables() -> str:
    """The same settings as GLIBC_TUNABLES, for a process this one starts and does not control."""
    return f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={KEEP_UP_TO}"


def without_other_settings(env: Mapping[str, str]) -> dict[str, str]:
    """`env` less whatever else changes malloc from outside (a glibc tuning, glibc's MALLOC_*
    variables, a preloaded allocator), so that a comparison of the two settings differs in this one."""
    return {k: v for k, v in env.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD") and not k.startswith("MALLOC_")}
