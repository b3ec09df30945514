"""The pinned mmap threshold: a 1 MB block stays mmapped (so freeing it returns it to the OS)
even after a 4 MB block was freed, which without the pin raises glibc's threshold to 4 MB."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from streamer.io.allocator import OPERATOR_SETTING, pin_mmap_threshold

PROBE = """
import ctypes, sys
from streamer.io.allocator import pin_mmap_threshold
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
libc.free(libc.malloc(4 << 20))
block = libc.malloc(1 << 20)
header = ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value
print(pinned, bool(header & 2))  # glibc marks an mmapped chunk with bit 2 of its size field
"""


def probe(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != OPERATOR_SETTING}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_a_pinned_threshold_keeps_large_blocks_mmapped() -> None:
    assert probe("pin") == "True True"


def test_without_the_pin_glibc_moves_its_threshold_up() -> None:
    assert probe("none") == "False False"


def test_the_operators_setting_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OPERATOR_SETTING, "65536")
    assert pin_mmap_threshold() is False
