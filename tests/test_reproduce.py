"""`make reproduce` end to end on the CPU (issue 30): synthetic copies of every dataset in its real layout under one DATA
folder (`reid-synth --layout all`), the paper studies at their declared `tiny` scale: every paper-table cell filled from the
runs, a missing dataset reported in one line with "no run" only in its cells, a run killed mid-way resumed by the next
invocation (through the subprocess queue) and its headroom arm evaluated after it, nothing else retrained, and a run another
machine holds left alone."""
import json
import shutil

import pandas as pd
import pytest
from conftest import BIN, run

from reid_nb import engine
from reid_nb.report import BEST_ROW, ccafl_ablation, ccafl_table1, collect_runs, ifd_table1, ifd_table2
from reid_nb.reproduce import LOCK, reproduce

KILLED = "paper-ifd-tiny-ltcc-ifd-s0"
KILLED_BN_A = "paper-ifd-tiny-ltcc-ifd_bn_a-s0"                                   # the headroom arm evaluating the killed run

def _cells(t, rows=None, skip=()):
    "The 'ours' cells of a report table (rows: those rows; else every column naming ours), minus columns starting with `skip`."
    df = t.df.loc[rows] if rows else t.df[[c for c in t.df.columns if "ours" in c]]
    return [v for c in df.columns if not c.startswith(tuple(skip)) for v in df[c]]

def test_reproduce_end_to_end(tmp_path, monkeypatch, capsys):
    data, runs = tmp_path / "data", tmp_path / "runs"
    run([str(BIN / "reid-synth"), "--layout", "all", "--out", str(data), "--ids", "4", "--test-ids", "3", "--images-per-cam", "2"])
    shutil.rmtree(data / "DukeMTMC-reID")                                   # one dataset not downloaded
    end_epoch = engine.end_epoch
    def killed_after_epoch_1(r, log, *a):                                     # the checkpoint is written, then the run dies
        end_epoch(r, log, *a)
        if r.cfg.name == KILLED and log[-1]["epoch"] == 1: raise RuntimeError("killed after epoch 1 (simulated)")
    monkeypatch.setattr(engine, "end_epoch", killed_after_epoch_1)
    first = reproduce(data, runs_dir=runs, scale="tiny")
    out = capsys.readouterr().out
    missing = [l for l in out.splitlines() if l.startswith("dukemtmc:")]
    assert len(missing) == 1 and str(data) in missing[0] and "DukeMTMC-reID/bounding_box_train" in missing[0], missing
    status = {o["name"]: o for o in first["outcomes"]}
    assert status.pop(KILLED)["message"] == "RuntimeError: killed after epoch 1 (simulated)"
    waits = status.pop(KILLED_BN_A)                                           # it evaluates the killed run: not yet
    assert waits["status"] == "skipped" and KILLED in waits["message"], waits
    assert len(status) == 20 and {o["status"] for o in status.values()} == {"ran"}   # 23 declared, 1 without data, 1 failed, 1 waits
    assert sum(v["state"] == "no data" for v in first["runs"].values()) == 1
    bn_a = json.loads((runs / KILLED_BN_A.replace("ltcc", "prcc") / "metrics.json").read_text())   # the headroom arm: an evaluation
    assert bn_a["evaluated_from"]["run"] == "paper-ifd-tiny-prcc-ifd-s0"

    monkeypatch.setattr(engine, "end_epoch", end_epoch)
    before = {p: p.stat().st_mtime_ns for p in runs.glob("*/metrics.json")}
    second = reproduce(data, runs_dir=runs, scale="tiny", jobs=2)             # two CPU workers: each run in its own process
    assert [(o["name"], o["status"]) for o in second["outcomes"]] == [(KILLED, "ran"), (KILLED_BN_A, "ran")], second["outcomes"]
    assert "continues after epoch 1" in (runs / "_logs" / f"{KILLED}.log").read_text()
    assert list(pd.read_csv(runs / KILLED / "log.csv").epoch) == [1, 2]
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/metrics.json") if p in before} == before   # nothing else retrained

    rs = collect_runs(runs)
    assert "no run" not in _cells(ifd_table1(rs), ["IFD (ours)", BEST_ROW]) + _cells(ifd_table2(rs)) + _cells(ccafl_ablation(rs))
    t1 = ccafl_table1(rs)
    assert "no run" not in _cells(t1, ["CCAFL (ours)", BEST_ROW], skip=["DukeMTMC-reID"])
    assert set(t1.df.loc["CCAFL (ours)", [c for c in t1.df.columns if c.startswith("DukeMTMC-reID")]]) == {"no run"}
    report = (runs / "report" / "reproduction.md").read_text()
    assert "paper-ifd-tiny: " in report and ", 0 without a run" in report.split("paper-ifd-tiny: ")[1].splitlines()[0]
    assert ", 4 without a run" in report.split("paper-ccafl-tiny: ")[1].splitlines()[0]          # Duke's four Table I cells
    assert "Datasets not found" in report and missing[0] in report
    assert "- paper-ifd-tiny, ltcc: ifd_bn_a closes " in report and "of the baseline-to-masked gap in cc.mAP" in report

    victim = runs / "paper-ifd-tiny-prcc-ifd-s0"                              # another machine holds this run (its lock)
    (victim / "metrics.json").unlink()
    (victim / LOCK).write_text(json.dumps({"host": "node-7", "pid": 1, "since": "now"}))
    third = reproduce(data, runs_dir=runs, scale="tiny")
    assert third["outcomes"] == [] and third["runs"][victim.name]["state"] == "locked"
    assert "in progress on node-7" in capsys.readouterr().out
