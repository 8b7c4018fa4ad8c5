"""tools/gpu_check.sh --dry_run: every part of the GPU acceptance run, on the CPU at tiny sizes, so that the script
works the day a GPU is there. Its parity part is the suite's passing parity run (case A, the full-size model)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_passes_every_part(tmp_path):
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--dry_run", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
                          timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["env", "parity", "correctness", "launcher", "speed"]
    assert all(part["status"] == "passed" for part in parts.values()) and report["passed"]
    assert parts["correctness"]["figures"]["passed"] >= 10
    assert parts["launcher"]["figures"]["sigterm_exit_status"] == 143
    assert parts["launcher"]["figures"]["resumed_at_step"] >= 10
    assert parts["speed"]["figures"]["infer1 fp32"]["median_s"] > 0
    assert "| launcher | passed |" in proc.stdout
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "tools/parity_check.py --case tests/data/case_A.pt" in log and "PARITY OK" in log
    assert "eval pred_boxes [6,B,4]" in parts["parity"]["figures"]


def test_unknown_part_is_refused(tmp_path):
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--only", "env,warp", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable},
                          check=False)
    assert proc.returncode == 2 and "unknown part(s) warp" in proc.stderr
