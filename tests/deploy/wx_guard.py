"""systemd's ``MemoryDenyWriteExecute=yes`` (and ``SystemCallFilter=~@resources``) as seccomp.

systemd (src/shared/seccomp-util.c) refuses with EPERM: ``mmap`` with PROT_WRITE and PROT_EXEC
both set, ``mprotect``/``pkey_mprotect`` adding PROT_EXEC, and ``shmat`` with SHM_EXEC. The same
checks as classic BPF, so a test can run the streamer's imports and inference under the rule
without systemd as PID 1; optionally the @resources system calls the streamer unit also denies
return EPERM, as ``SystemCallErrorNumber=EPERM`` makes them. x86-64 only; irreversible for the
calling process, so run it in a child process.
"""

from __future__ import annotations

import ctypes
import platform
import struct

AUDIT_ARCH_X86_64 = 0xC000003E
NR_MMAP, NR_MPROTECT, NR_SHMAT, NR_PKEY_MPROTECT = 9, 10, 30, 329
# systemd 252's @resources on x86-64: setpriority, sched_setparam, sched_setscheduler, setrlimit,
# sched_setaffinity, mbind, set_mempolicy, ioprio_set, migrate_pages, move_pages,
# sched_setattr, set_mempolicy_home_node
RESOURCES_SYSCALLS = (141, 142, 144, 160, 203, 237, 238, 251, 256, 279, 314, 450)
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, EPERM = 0x7FFF0000, 0x00050000, 1
# classic BPF opcodes
LD_W_ABS, JEQ_K, JSET_K, AND_K, RET_K = 0x20, 0x15, 0x45, 0x54, 0x06
OFF_NR, OFF_ARCH, OFF_ARG2_LOW = 0, 4, 32  # struct seccomp_data, little endian

Instruction = tuple[int, str | None, str | None, int]


def program(deny_resources: bool) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k), jump targets resolved from labels."""
    source: list[str | Instruction] = [
        (LD_W_ABS, None, None, OFF_ARCH),
        (JEQ_K, None, "allow", AUDIT_ARCH_X86_64),
        (LD_W_ABS, None, None, OFF_NR),
        (JEQ_K, "mmap", None, NR_MMAP),
        (JEQ_K, "mprotect", None, NR_MPROTECT),
        (JEQ_K, "mprotect", None, NR_PKEY_MPROTECT),
        (JEQ_K, "shmat", None, NR_SHMAT),
        *[(JEQ_K, "deny", None, nr) for nr in (RESOURCES_SYSCALLS if deny_resources else ())],
        (RET_K, None, None, SECCOMP_RET_ALLOW),
        "mmap",
        (LD_W_ABS, None, None, OFF_ARG2_LOW),
        (AND_K, None, None, PROT_WRITE | PROT_EXEC),
        (JEQ_K, "deny", "allow", PROT_WRITE | PROT_EXEC),
        "mprotect",
        (LD_W_ABS, None, None, OFF_ARG2_LOW),
        (JSET_K, "deny", "allow", PROT_EXEC),
        "shmat",
        (LD_W_ABS, None, None, OFF_ARG2_LOW),
        (JSET_K, "deny", "allow", SHM_EXEC),
        "allow",
        (RET_K, None, None, SECCOMP_RET_ALLOW),
        "deny",
        (RET_K, None, None, SECCOMP_RET_ERRNO | EPERM),
    ]
    labels: dict[str, int] = {}
    code: list[Instruction] = []
    for item in source:
        if isinstance(item, str):
            labels[item] = len(code)
        else:
            code.append(item)
    out = []
    for pc, (op, jt, jf, k) in enumerate(code):
        # BPF jumps are relative to the next instruction
        out.append(
            (
                op,
                0 if jt is None else labels[jt] - pc - 1,
                0 if jf is None else labels[jf] - pc - 1,
                k,
            )
        )
    return out


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


def install(deny_resources: bool = False) -> None:
    """Install the filter for this process and its future threads; raise OSError on failure."""
    instructions = program(deny_resources)
    code = b"".join(struct.pack("<HBBI", *instruction) for instruction in instructions)
    prog = _SockFprog(len(instructions), code)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
