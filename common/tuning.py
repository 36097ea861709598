"""Process tuning for the long-running paths (worker, demo, evaluate, benchmarks).

Three knobs, measured on the pipeline (bench/stream.py, bench/sink.py):

The cyclic garbage collector runs a generation-0 pass every 700 net allocations. A batch of 20,000
records allocates hundreds of thousands of short-lived, acyclic objects, so the collector ran
constantly and rescanned the batch in flight: 26 us/event in the pipeline, 21.5 with a threshold of
50,000 allocations.

And the allocator:

glibc returns freed memory at the top of the heap to the kernel as soon as more than 128 KiB is
free, and serves allocations over 128 KiB with fresh mmaps. A stream worker allocates and frees
megabytes per batch (row bytes, JSON payloads), so every batch page-faults its memory in again:
measured here, two minor faults per audit row, which made row serialization 6x slower. Raising the
trim and mmap thresholds keeps that memory in the process for reuse. The cost is that up to
`KEEP_BYTES` of freed memory stays attributed to the process. No effect on other C libraries.

And the interpreter's thread switch interval:

Faust's Kafka consumer runs in its own thread. Each time it has sent a fetch request or received a
response it needs the GIL back, and while the event loop decides a batch it gets it only when the
switch interval (5 ms by default) expires: the fetch loop stalls behind the CPU-bound thread.
A 1 ms interval hands the GIL over sooner. bench/stream.py (120,000 events): ratio 0.485-0.514
over 4 runs with 5 ms, 0.469-0.611 (median 0.538) over 7 runs with 1 ms, interleaved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 256 << 20
TOP_PAD_BYTES = 16 << 20
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum for the dynamic threshold is 32 MiB on 64-bit

GC_THRESHOLDS = (50_000, 20, 100)
SWITCH_INTERVAL_SECONDS = 0.001

_tuned = False


def tune_process() -> bool:
    """Raise the GC's generation-0 threshold, keep what exists so far out of future collections
    (modules, policy, app: they live as long as the process), shorten the GIL switch interval, and
    apply the allocator thresholds."""
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.collect()
    gc.freeze()
    return tune_allocator()


def tune_allocator() -> bool:
    """Apply the thresholds once per process; True when glibc accepted them."""
    global _tuned
    if _tuned:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(option, value) == 1
        for option, value in (
            (M_TRIM_THRESHOLD, KEEP_BYTES),
            (M_TOP_PAD, TOP_PAD_BYTES),
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        )
    )
    _tuned = ok
    if not ok:
        log.debug("glibc did not accept the allocator thresholds")
    return ok
