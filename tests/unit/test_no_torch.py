"""The streamer never imports torch (DESIGN.md section 1: about 1.1 s and 180 MB saved).

Each check runs in a fresh interpreter with a meta-path finder that records every attempt to
import ``torch`` (or a submodule), so it fails whether or not torch is installed in the venv.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "tickcast-streamer"

WATCH = """
import json, sys
attempts = []
class _TorchWatch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            attempts.append(name)
        return None
sys.meta_path.insert(0, _TorchWatch())
"""
REPORT = """
print("\\nTORCH " + json.dumps({"loaded": "torch" in sys.modules, "attempts": attempts}))
"""


def run_watched(body: str) -> tuple[dict[str, object], str]:
    proc = subprocess.run(
        [sys.executable, "-c", WATCH + body + REPORT],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.rstrip().splitlines()[-1]
    assert last.startswith("TORCH "), proc.stdout
    report: dict[str, object] = json.loads(last.removeprefix("TORCH "))
    return report, proc.stdout


def test_importing_the_streamer_never_imports_torch() -> None:
    report, _ = run_watched(
        "import streamer, streamer.app, streamer.cli, streamer.demo, streamer.io.serving\n"
        "import streamer.io.model, streamer.io.publisher, streamer.io.store, streamer.settings\n"
    )
    assert report == {"loaded": False, "attempts": []}


def test_cli_help_never_imports_torch() -> None:
    report, out = run_watched(
        "from streamer.cli import main\n"
        "for argv in (['--help'], ['demo', '--help'], ['run', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
    )
    assert report == {"loaded": False, "attempts": []}
    assert out.count("usage: tickcast-streamer") == 3
    assert "--for SECONDS" in out


def test_the_watch_sees_a_torch_import() -> None:
    """The check itself can fail: an import of torch (found or not) is recorded."""
    report, _ = run_watched("try:\n    import torch.nn  # noqa\nexcept ImportError:\n    pass\n")
    attempts = report["attempts"]
    assert isinstance(attempts, list) and attempts[0] == "torch"


def test_console_script_help_exits_zero() -> None:
    proc = subprocess.run(
        [str(SCRIPT), "--help"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "run" in proc.stdout
