"""Every command answers --help without importing torch (so at once, even on a loaded machine)."""

import subprocess
import sys

import pytest

from conftest import REPO

COMMANDS = ["src/gpt2_ft.py", "src/gpt2_beam.py", "src/gpt2_export.py", "src/gpt2_decode.py", "src/gpt2_encode.py",
            "src/format_converting_e2e.py", "src/format_converting_webnlg.py", "src/format_converting_dart.py",
            "eval/e2e/measure_scores.py", "eval/GenerationEval/eval.py", "scripts/compare_with_paper.py",
            "scripts/plot_losses.py", "scripts/sweep_table.py"]
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    assert done.code in (0, None), done.code
print("torch imported" if "torch" in sys.modules else "no torch")
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_answers_without_importing_torch(command):
    done = subprocess.run([sys.executable, "-c", PROBE, str(REPO / command)], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith("no torch"), done.stdout[-500:]
    assert "usage:" in done.stdout
