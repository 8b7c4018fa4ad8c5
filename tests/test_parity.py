"""The full-size model against the original SegVG's numbers (tests/data/case_A.pt, ~30 s, ~4.5 GB): a perturbed
weight fails the check and names where. The passing run, `tools/parity_check.py --case tests/data/case_A.pt`, is
the parity part of tools/gpu_check.sh's dry run (tests/test_gpu_check.py), which the suite runs once."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "data" / "case_A.pt"


@pytest.mark.slow
def test_parity_tool_fails_and_names_the_first_divergence(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("parity_check", ROOT / "tools" / "parity_check.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    load = tool.load_official_checkpoint

    def load_then_perturb(model, checkpoint):
        load(model, checkpoint)
        with torch.no_grad():
            model.triple_alignment[2].visual.out.bias.add_(0.05)

    monkeypatch.setattr(tool, "load_official_checkpoint", load_then_perturb)
    assert tool.main(["--case", str(CASE)]) == 1
    out = capsys.readouterr().out
    assert "PARITY FAILED" in out
    assert "first diverging intermediate: deepfuse.call2.0" in out
    assert torch.is_grad_enabled()  # the tool must not leak its no_grad mode into its caller
