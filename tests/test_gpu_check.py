"""bench/gpu_check.py works before any GPU sees it: its CPU mode (`--device cpu --quick`) runs every section at tiny sizes
(the baseline alone here: every registered method's training is checked on the CPU by test_datapath / test_engine's DDP
test, and a real SIGKILL + resume by test_engine.test_killed_run_resumes_to_same_metrics),
writes both reports and passes its correctness checks; a failed check makes it exit 1."""
import json, sys
from conftest import ROOT, run

def test_gpu_check_cpu_mode(tmp_path):
    # no time budget here: on a loaded machine the budget would skip speed rows (41 s alone on the 2-core CI machine)
    p = run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--quick", "--budget-s", "1e9", "--out", str(tmp_path / "gc"),
             "--methods", "baseline"], timeout=900)
    rep = json.loads((tmp_path / "gc" / "report.json").read_text())
    rows = rep["rows"]
    assert {r["section"] for r in rows} == {"env", "precision", "determinism", "speed", "eval", "cuda tests"}, p.stdout[-2000:]
    checks = [r for r in rows if r["ok"] is not None]
    assert len(checks) >= 5 and all(r["ok"] for r in checks), [r for r in checks if not r["ok"]]   # precision, 2 determinism, eval, cuda
    assert any("SIGKILL" in r["check"] and r["ok"] for r in rows)                          # the kill / resume check ran
    sys.path.insert(0, str(ROOT / "bench")); import gpu_check                              # its methods: every registered one
    from reid_nb.engine import load_methods
    assert list(gpu_check.METHODS) == sorted(load_methods()) and {r["check"].split(":")[0] for r in rows if r["section"] == "precision"} == {"baseline"}
    assert sum(r["section"] == "speed" for r in rows) == 2 and (tmp_path / "gc" / "report.md").read_text().count("\n|") >= len(rows)

def test_gpu_check_exits_1_on_a_failed_check(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check
    rep = gpu_check.Report(); rep.add("eval", "a check", "wrong", "right", False); rep.add("eval", "a figure", 1.0)
    assert [r["check"] for r in rep.failed()] == ["a check"]
    import torch
    if not torch.cuda.is_available():                                 # asked for a GPU where there is none: a clear exit 1
        p = run([sys.executable, "bench/gpu_check.py", "--device", "cuda", "--out", str(tmp_path / "x")], check=False)
        assert p.returncode == 1 and "no CUDA device here" in p.stderr
