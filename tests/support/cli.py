"""``python -m streamer`` as a short-lived process with a bare environment: PATH and the given
``TICKCAST_*`` variables only, so nothing of the test runner's environment leaks in."""

from __future__ import annotations

import os
import subprocess
import sys

from support.servers import REPO


def bare_env(variables: dict[str, str]) -> dict[str, str]:
    """PATH and ``variables``, nothing else."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **variables}


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m streamer *args`` run to its end, in the repository, with ``bare_env(env)``;
    its exit code and text output."""
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args],
        env=bare_env(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
