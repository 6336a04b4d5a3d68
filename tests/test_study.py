"""Declared studies (reid_nb.study, issue 22): every file under studies/ is valid at each of its scales; a study runs end to end
through nbs/ablation.ipynb with a summary that matches the runs' own metrics; bad study files are one-line errors naming the
file and the key; the committed results (studies/results/) regenerate from their results.csv, and the README quotes them."""
import json, math, subprocess
import numpy as np
import pandas as pd
import pytest
from reid_nb.study import load_study, study_runs, run_config_of, summarise, claims_markdown
from conftest import ROOT, BIN, cli_here

STUDIES = sorted((ROOT / "studies").glob("*.yaml"))

@pytest.mark.parametrize("f", STUDIES, ids=[f.stem for f in STUDIES])
def test_declared_studies_are_valid(f, tmp_path):
    s = load_study(f)
    for scale in [None, *s.scales]:
        sc = load_study(f, scale)
        runs = study_runs(sc)
        n_ds = len(sc.axes.get("dataset", [None]))                         # a variant's `datasets` runs it on those only
        per_point = sum(len((v or {}).get("datasets", [None] * n_ds)) for v in sc.variants.values())
        others = math.prod(len(p) for a, p in sc.axes.items() if a != "dataset")
        assert len({r.name for r in runs}) == len(runs) == (len(sc.seeds) + len(sc.confirm_seeds)) * per_point * others
        for r in runs: run_config_of(sc, r, tmp_path, tmp_path)            # every run's TrainConfig is valid (names, types)
    if not s.paper:      # a paper study reproduces published cells (one seed by default, `--seeds` for more), it claims no comparison
        assert len(s.seeds) >= 3, "a declared comparison needs seeds for an interval"

TINY = """name: tiny
method: ifd
dataset: synth-prcc
dataset_opts: {n_train_ids: 4, n_test_ids: 3, images_per_cam: 2}
train: {epochs: 2, batch_size: 16, num_instances: 4, image_size: [64, 32], eval_every: 0, device: cpu}
variants:
  baseline: {method_opts: {variant: baseline}}
  ifd: {method_opts: {variant: ifd}}
  ifd_bn_a: {evaluates: ifd, method_opts: {variant: ifd, eval_feature: bn_a}}
seeds: [0, 1, 2]
primary: cc.mAP
metrics: [cc.R1, mechanism.camera_probe.acc]
comparisons: [[ifd, baseline]]
"""

def test_ablation_notebook_runs_a_declared_study(tmp_path, monkeypatch):
    "Two variants x three seeds (the loader's minimum for a comparison) and an evaluation-only variant through nbs/ablation.ipynb:\n"
    "a run each, results.csv from their metrics, the summary by hand, the report; the evaluations equal training the variant."
    f = tmp_path / "tiny.yaml"; f.write_text(TINY)
    p = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs" / "ablation.ipynb"), str(tmp_path / "out.ipynb"), "-k", "python3",
                        "-p", "study", str(f), "-p", "data_root", str(tmp_path / "data"), "-p", "out_dir", str(tmp_path / "studies"),
                        "-p", "runs_dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    out = tmp_path / "studies" / "tiny"
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 9 and set(rows.variant) == {"baseline", "ifd", "ifd_bn_a"} and set(rows.seed) == {0, 1, 2}
    for _, r in rows.iterrows():
        m = json.loads((tmp_path / "runs" / r.run / "metrics.json").read_text())
        c = json.loads((tmp_path / "runs" / r.run / "config.json").read_text())
        assert c["method_opts"]["variant"] == r.variant.removesuffix("_bn_a") and c["seed"] == r.seed
        assert abs(r["cc.mAP"] - 100 * m["protocols"]["cc"]["mAP"]) < 1e-9
        assert 0 <= m["mechanism"]["camera_probe"]["acc"] <= 1 and "attention_on_clothes" in m["mechanism"] or r.variant == "baseline"
    # the bn_a arm trained nothing: IFD's weights and training log, its own evaluation, equal to training the variant itself
    import torch
    from reid_nb.engine import TrainConfig, fit
    for seed in (0, 1, 2):
        ev, tr = (tmp_path / "runs" / f"tiny-{v}-s{seed}" for v in ("ifd_bn_a", "ifd"))
        m = json.loads((ev / "metrics.json").read_text())
        assert m["evaluated_from"] == {"run": tr.name, "weights_sha256": json.loads((tr / "model.json").read_text())["weights_sha256"]}
        assert (ev / "model.pt").read_bytes() == (tr / "model.pt").read_bytes() or all(torch.equal(a, b) for a, b in zip(
            torch.load(ev / "model.pt", weights_only=True).values(), torch.load(tr / "model.pt", weights_only=True).values()))
        assert pd.read_csv(ev / "log.csv")["seconds"].tolist() == pd.read_csv(tr / "log.csv")["seconds"].tolist()
    threads = torch.get_num_threads(); torch.set_num_threads(1)           # the study's threads: the same arithmetic as its runs
    try: direct = fit(TrainConfig.from_dict({**json.loads((ev / "config.json").read_text()), "name": "direct", "out_dir": str(tmp_path / "direct")}))
    finally: torch.set_num_threads(threads)
    for prot, d in direct["protocols"].items():
        assert abs(d["mAP"] - m["protocols"][prot]["mAP"]) < 1e-6, (prot, d, m["protocols"][prot])
    assert m["protocols"] != json.loads((tr / "metrics.json").read_text())["protocols"]       # it ranked another feature
    summ = json.loads((out / "summary.json").read_text())
    d = rows[rows.variant == "ifd"].set_index("seed")["cc.mAP"] - rows[rows.variant == "baseline"].set_index("seed")["cc.mAP"]
    c = summ["comparisons"][0]["cc.mAP"]
    half = 4.303 * d.std(ddof=1) / math.sqrt(3)
    assert abs(c["diff"] - d.mean()) < 1e-9 and abs(c["high"] - (d.mean() + half)) < 1e-6 and c["wins"] == int((d > 0).sum())
    assert (out / "curves.png").is_file() and "tiny" in (out / "claims.md").read_text()
    from reid_nb.report import collect_runs, find_run
    assert len(find_run(collect_runs(tmp_path / "runs"), "ifd", "synth-prcc", "ifd").group) == 3     # the report sees every seed
    assert len(find_run(collect_runs(tmp_path / "runs"), "ifd", "synth-prcc", "ifd:bn_a").group) == 3
    # a second run of the notebook trains nothing: every run is reused (same config)
    before = {r: (tmp_path / "runs" / r / "model.pt").stat().st_mtime_ns for r in rows.run}
    p = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs" / "ablation.ipynb"), str(tmp_path / "out2.ipynb"), "-k", "python3",
                        "-p", "study", str(f), "-p", "data_root", str(tmp_path / "data"), "-p", "out_dir", str(tmp_path / "studies"),
                        "-p", "runs_dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0 and before == {r: (tmp_path / "runs" / r / "model.pt").stat().st_mtime_ns for r in rows.run}
    # another study declaring the same arms under its own name reuses them (--reuse): nothing trains or evaluates again, the same
    # rows, and each adopted folder reads as a run of its own (read_run checks config, model.json and weights agree)
    from reid_nb import engine
    from reid_nb.inference import read_run
    from reid_nb.study import run_study
    f2 = tmp_path / "tiny2.yaml"; f2.write_text(TINY.replace("name: tiny", "name: tiny2"))
    monkeypatch.setattr(engine, "fit", lambda *a, **k: pytest.fail("a reused run trained"))
    monkeypatch.setattr(engine, "evaluate_trained", lambda *a, **k: pytest.fail("a reused evaluation ran again"))
    threads = torch.get_num_threads()
    try: run_study(load_study(f2), tmp_path / "studies", tmp_path / "data", runs_dir=tmp_path / "runs2", reuse=[tmp_path / "runs"])
    finally: torch.set_num_threads(threads)
    rows2 = pd.read_csv(tmp_path / "studies" / "tiny2" / "results.csv")
    assert rows2.run.tolist() == [r.replace("tiny-", "tiny2-") for r in rows.run]
    pd.testing.assert_frame_equal(rows2.drop(columns="run"), rows.drop(columns="run"))
    for r in rows2.run:
        cfg, *_ = read_run(tmp_path / "runs2" / r)
        assert cfg.name == r and json.loads((tmp_path / "runs2" / r / "reused_from.json").read_text())["run"] == \
            str((tmp_path / "runs" / r.replace("tiny2-", "tiny-")).resolve())

@pytest.mark.parametrize("change,message", [
    (lambda t: t + "seed: 3\n", "unknown key(s) ['seed']"),
    (lambda t: t.replace("[[ifd, baseline]]", "[[ifd, ikt]]"), "undeclared variant(s) ['ikt']"),
    (lambda t: t.replace("primary: cc.mAP\n", ""), "missing key(s) ['primary']"),
    (lambda t: t.replace("seeds: [0, 1, 2]", "seeds: [0, 0, 1]"), "seeds repeat"),
    (lambda t: t.replace("seeds: [0, 1, 2]", "seeds: [0, 1]"), "at least 3 seeds"),
    (lambda t: t.replace("ifd: {method_opts: {variant: ifd}}", "ifd: {method: ifd2}"), "variant 'ifd'"),
])
def test_bad_study_file_is_one_line_error(tmp_path, change, message):
    f = tmp_path / "bad.yaml"; f.write_text(change(TINY))
    p = cli_here("reid-study", f, "--out", tmp_path / "o")                   # the console script's function, in this process
    assert p.returncode == 1 and message in p.stderr and str(f) in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()                                         # nothing ran, nothing written

RESULTS = sorted((ROOT / "studies" / "results").glob("*/results.csv"))

@pytest.mark.parametrize("f", RESULTS, ids=[f.parent.name for f in RESULTS])
def test_committed_results_regenerate(f):
    "The committed summary and claims are what the committed per-run results give, and the README quotes the claims."
    s = load_study(f.parent / "study.yaml")
    s.name = f.parent.name
    rows = pd.read_csv(f)
    assert len(rows) == len(study_runs(s))
    summ = summarise(s, rows)
    have = json.loads((f.parent / "summary.json").read_text())
    assert np.allclose([c[s.primary]["diff"] for c in summ["comparisons"]], [c[s.primary]["diff"] for c in have["comparisons"]])
    claims = claims_markdown(summ, s)
    assert claims == (f.parent / "claims.md").read_text()
    assert claims.strip() in (ROOT / "README.md").read_text()
