"""CCAFL end to end on the camera-biased synthetic data: every stage and term runs in its window, the association gets precise,
the model learns a cross-camera ranking; and no true cross-camera identity reaches a loss. Whether CCAFL beats its baselines
at this scale is a multi-seed question: studies/ccafl-budget.yaml and nbs/13_ccafl.ipynb (it does not, at this budget)."""
import dataclasses
import numpy as np
import pandas as pd
import pytest
import torch
from reid_nb.core import load_checkpoint
from reid_nb.engine import fit, make_config, load_methods, METHODS
from reid_nb.data import load_dataset, ImageDataset, intra_camera_labels
from reid_nb.transforms import TransformConfig, build_transforms
from conftest import ROOT, chance_map

from reid_nb.study import load_study
_S = load_study(ROOT / "studies" / "ccafl-ablation.yaml")           # the setting the figures below were measured at
DATA, CCAFL_OPTS = _S.dataset_opts, _S.train["method_opts"]

def cfg(tmp, variant, **kw):
    return make_config("ccafl", "synth-market", name=variant, backbone="reid-tiny-rn", data_root=str(tmp / "data"), out_dir=str(tmp / "runs"),
                       epochs=12, image_size=(128, 64), batch_size=32, num_instances=4, dataset_opts=DATA, progress=False, eval_every=0,
                       method_opts={"variant": variant, **(CCAFL_OPTS if variant != "ics_baseline" else {})}, device="cpu", **kw)

def test_ccafl_end_to_end(tmp_path):
    m = fit(cfg(tmp_path, "ccafl"))["protocols"]["standard"]
    log = pd.read_csv(tmp_path / "runs" / "ccafl" / "log.csv")
    assert log.stage.tolist() == ["icdl"] * 2 + ["inter"] * 10
    assert np.isfinite(log.prompt_loss.iloc[0]) and log.prompt_loss.iloc[1:].isna().all()     # stage 1 ran once, finite
    inter = log[log.stage == "inter"]
    assert log.loc[log.stage == "icdl", ["icdl", "i2t", "centroid_triplet"]].notna().all().all()
    assert inter.cluster.notna().all() and inter.assoc_precision.notna().all()
    # windows count global epochs (0-based): cluster text from 3, ICAL in [9, 12)
    assert log.i2ct.notna().tolist() == [e >= 3 for e in range(12)] and log.ical_adv.notna().tolist() == [9 <= e < 12 for e in range(12)]
    # seeds 0-4 (studies/ccafl-smoothing.yaml, "ours"; 2026-12-01): precision 0.25-0.72 at the first association, 0.89 +- 0.08
    # (0.76-0.97) at the last; it rose in all 15 runs measured (this code and the two versions before). Bound: about the
    # mean minus 4 std.
    prec = inter.assoc_precision.tolist()
    assert prec[-1] > prec[0] and prec[-1] >= 0.55, prec
    data = load_dataset("synth-market", tmp_path / "data", **DATA)
    mean, std = chance_map(data, "standard")
    print("ccafl", m["mAP"], m["R1"], "chance", mean, std)
    assert m["mAP"] > mean + 5 * std                 # chance 0.073 +- 0.008; CCAFL 0.44 +- 0.13 (0.23-0.56) over seeds 0-4
    # the ICAL classifier trains on the engine's immediate auxiliary group: one Adam step per iteration, its state checkpointed
    # (moved there bit-identically: a 4-epoch run and a resumed pre-move checkpoint matched the old code exactly, 2026-12-05)
    ck = load_checkpoint(tmp_path / "runs" / "ccafl" / "checkpoints" / "last.pt")
    adam = ck["aux"]["ical"]["state"][0]
    assert ck["method"] == {} and int(adam["step"]) >= 12 and adam["exp_avg"].shape == ck["model"]["ical"].shape   # >= 1 step an epoch

def test_no_true_cross_camera_identity_reaches_a_loss(tmp_path):
    "Scramble which pids are the same person across cameras (within-camera groups kept): labels and losses do not change."
    load_methods()
    opts = {"variant": "ccafl", **CCAFL_OPTS, "prompt_epochs": 1, "icdl_epochs": 1}
    c = cfg(tmp_path, "ccafl").replace(epochs=12, method_opts=opts)
    data = load_dataset("synth-market", tmp_path / "data", **DATA)
    # pid -> its rank among the pids of its camera: the k-th person of every camera now "is" one person (wrong links),
    # the true links are gone, and each camera's own grouping and order are unchanged
    perm = {cam: {p: k for k, p in enumerate(sorted({s.pid for s in data.train if s.camid == cam}))} for cam in range(4)}
    scrambled = dataclasses.replace(data, train=[dataclasses.replace(s, pid=int(perm[s.camid][s.pid])) for s in data.train])
    a, b = METHODS["ccafl"](c, data), METHODS["ccafl"](c, scrambled)
    assert a.train_labels() == b.train_labels()
    # nor do the class indices carry the identity: class k of one camera is rarely the same person as class k of another
    ics = intra_camera_labels(data.train)
    same = [a.class_true[a.offset[c1] + k] == a.class_true[a.offset[c2] + k] for c1 in a.cams for c2 in a.cams if c1 < c2
            for k in range(min(a.n_cam_cls[c1], a.n_cam_cls[c2]))]
    assert np.mean(same) < 0.5, np.mean(same)
    torch.manual_seed(0); model = a.build_model()
    tf, _ = build_transforms(TransformConfig(size=(128, 64), norm="clip"))
    torch.manual_seed(1)
    batch = torch.utils.data.default_collate([ImageDataset(data.train, tf, labels=a.train_labels())[i] for i in range(0, 64, 4)])
    out, state = {}, {k: v.clone() for k, v in model.state_dict().items()}
    # epoch 10: inside the ICAL window (9..11) and past cluster_text_start (3), so every stage-3 term runs
    for name, meth in (("true", a), ("scrambled", b)):
        model.load_state_dict(state)                       # same weights, BN statistics and prompts for both
        for stage in meth.stages():
            torch.manual_seed(2); meth.on_epoch_start(model, stage, 10 if stage.name == "inter" else 0)
            model.train(); torch.manual_seed(3)
            out[(name, stage.name)] = {k: float(v.detach()) for k, v in meth.loss(model, batch, stage, 10 if stage.name == "inter" else 0).items()}
    assert {"icdl", "i2t", "centroid_triplet"} <= out[("true", "icdl")].keys()
    assert {"cluster", "i2ct", "ical_adv"} <= out[("true", "inter")].keys()
    for stage in ("icdl", "inter"):
        assert out[("true", stage)].keys() == out[("scrambled", stage)].keys()
        for k in out[("true", stage)]: assert abs(out[("true", stage)][k] - out[("scrambled", stage)][k]) < 1e-5, (stage, k)
    assert not np.array_equal(ics.true_pid, intra_camera_labels(scrambled.train).true_pid)

def _per_class_update(cent, inst, slots, mom, feats, labels):
    "CameraMemory.update written one class at a time (the cluster-contrast way), for the vectorised version to equal."
    cent, inst, feats = cent.clone(), inst.clone(), torch.nn.functional.normalize(feats.float(), dim=1)
    for y in labels.unique().tolist():
        f = feats[labels == y]
        cent[y] = torch.nn.functional.normalize(mom * cent[y] + (1 - mom) * f.mean(0), dim=0)
        inst[y, :min(len(f), slots)] = f[:slots]
    return cent, inst

def _per_cluster_hard_update(mem, fn, pk, mom):
    mem = mem.clone()
    sims = (fn * mem[pk]).sum(1)
    for k in pk.unique():
        j = torch.nonzero(pk == k).flatten()
        mem[k] = torch.nn.functional.normalize(mom * mem[k] + (1 - mom) * fn[j[sims[j].argmin()]], dim=0)
    return mem

@pytest.mark.parametrize("seed", range(9))
def test_memory_updates_without_loops_equal_per_class(seed):
    import types
    from reid_nb.ccafl import CameraMemory, CCAFL
    F_ = torch.nn.functional
    g = torch.Generator().manual_seed(seed)
    C, S, D, B = 20, [2, 4, 32][seed % 3], [16, 256, 1024][seed % 3], [8, 32, 64][seed % 3]   # S=2: classes past their slots
    mem = CameraMemory(torch.randn(60, D, generator=g), torch.randint(0, C, (60,), generator=g), C, slots=S, momentum=0.1, generator=g)
    feats, labels = torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)
    ref = _per_class_update(mem.centroids, mem.inst, S, 0.1, feats, labels)
    mem.update(feats, labels)
    assert torch.equal(mem.centroids, ref[0]) and torch.equal(mem.inst, ref[1])
    fn, pk = F_.normalize(torch.randn(B, D, generator=g), dim=1), torch.randint(0, C, (B,), generator=g)
    fn[1], pk[1] = fn[0], pk[0]                                          # a tie: the first least similar sample wins
    pk[-3:] = -1                                                         # samples without a pseudo identity move nothing
    cm = F_.normalize(torch.randn(C, D, generator=g), dim=1)
    fake = types.SimpleNamespace(cluster_mem=cm.clone(), opts=types.SimpleNamespace(momentum=0.2))
    CCAFL._hard_update(fake, fn, pk)
    assert torch.equal(fake.cluster_mem, _per_cluster_hard_update(cm, fn[pk >= 0], pk[pk >= 0], 0.2))

def test_no_icdl_learns_prompts_first_and_the_authors_sampler_and_bias_rule_run(tmp_path):
    "no_icdl learns its prompts before any encoder step, as every variant; the class-uniform sampler and 2x bias lr run end to end."
    c = cfg(tmp_path, "no_icdl", bias_lr_factor=2.0, iters_per_epoch=4)
    c = c.replace(epochs=3, method_opts={**c.method_opts, "sampler": "uniform"})
    fit(c)
    log = pd.read_csv(tmp_path / "runs" / "no_icdl" / "log.csv")
    assert log.stage.tolist() == ["icdl", "icdl", "inter"] and np.isfinite(log.prompt_loss.iloc[0]) and log.prompt_loss.iloc[1:].isna().all()
    groups = torch.load(tmp_path / "runs" / "no_icdl" / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g.get("lr_mult", 1.0) for g in groups] == [1.0, 2.0] and groups[1]["lr"] == pytest.approx(2 * groups[0]["lr"])
