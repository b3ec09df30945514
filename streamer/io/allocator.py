"""Pin glibc's mmap threshold, so the inference round's large temporaries go back to the OS.

glibc raises its mmap threshold to the size of the largest mmapped block freed so far
(dynamic threshold). onnxruntime frees a ~4 MB buffer in the first round, after which every
round's numpy temporaries of 0.1-4 MB land on the heap, and the heap stays fragmented: about
7 MB of the streamer's memory at 1,000 symbols (``bench/bench_memory.py``). Setting the
threshold explicitly turns the dynamic adjustment off; 128 KiB is glibc's own starting value.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h> parameter number
MMAP_THRESHOLD_BYTES = 128 * 1024
OPERATOR_SETTING = "MALLOC_MMAP_THRESHOLD_"  # glibc's own variable: the operator's choice


def pin_mmap_threshold(threshold_bytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix the threshold at ``threshold_bytes``; True when it took effect. Does nothing where the
    operator set glibc's variable, and off glibc (musl, macOS), where the call is missing or a
    stub answering 0."""
    if OPERATOR_SETTING in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
    if not done:
        log.info("mallopt(M_MMAP_THRESHOLD) refused: the allocator keeps its own threshold")
    return done
