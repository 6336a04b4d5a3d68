"""A trained model outside `fit`: the embedder gives fit's features for every method (IFD with its masks, CCAFL with OpenAI-style
CLIP weights and their QuickGELU), the folder embedding resumes after a kill, the search is exact (and faiss with every cell
probed agrees with it), the exports agree with PyTorch, and bad input is an error naming the file."""
import json, re, shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reid_nb.core import load_checkpoint
from reid_nb.engine import fit, load_methods, make_config, smoke_config
from reid_nb.inference import Embedder, build_for_inference, find_mask, list_images, load_model, read_run
from reid_nb.features import embed_folder, embed_main, read_features
from reid_nb.search import search, search_main, topk_exact
from reid_nb.export import check_export, export, export_main
from reid_nb.metrics import pairwise_distance, re_ranking

SMALL = dict(n_train_ids=8, n_test_ids=8, images_per_cam=3)
COMMON = dict(epochs=2, image_size=(64, 32), batch_size=16, num_instances=4, eval_every=0, progress=False, device="cpu")

def _openai_style_vit(path: Path) -> str:
    "An OpenAI-style TorchScript CLIP (QuickGELU) of a tiny ViT registered with open_clip under the same name: the way RN50's file fits open_clip's RN50."
    import open_clip
    from open_clip import factory
    from open_clip.model import CLIP
    cfg = dict(embed_dim=32, vision_cfg=dict(image_size=64, layers=1, width=64, patch_size=16, head_width=64),
               text_cfg=dict(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    factory._MODEL_CONFIGS.setdefault("test-openai-vit", cfg)
    torch.manual_seed(0)
    ref = CLIP(**cfg, quick_gelu=True).eval()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(ref, (torch.randn(1, 3, 64, 64), open_clip.tokenize(["a person"])), strict=False), str(path))
    return "test-openai-vit"

REGISTERED = sorted(load_methods())      # every registered method, a plugin's too: the checks below run for each

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Small trained runs: baseline and IFD on synth-prcc (masks), CCAFL on synth-market from OpenAI-style ViT weights, any other\n"
    "registered method at its `smoke` setting."
    tmp = tmp_path_factory.mktemp("inference")
    kw = dict(data_root=str(tmp / "data"), out_dir=str(tmp / "runs"), **COMMON)
    fit(make_config("baseline", "synth-prcc", name="baseline", dataset_opts=SMALL, **kw))
    fit(make_config("ifd", "synth-prcc", name="ifd", dataset_opts=SMALL, method_opts={"attn_epochs": 1}, **kw))
    name = _openai_style_vit(tmp / "vit-openai.pt")
    fit(make_config("ccafl", "synth-market", name="ccafl", backbone=name, weights=str(tmp / "vit-openai.pt"),
                    dataset_opts=dict(n_train_ids=8, n_test_ids=8, n_cams=3, cams_per_id=2, images_per_cam=3),
                    method_opts=dict(prompt_epochs=1, icdl_epochs=1, cluster_text_start=1, ical_start=1, ical_end=2, assoc_rate=1.0), **kw))
    for m in set(REGISTERED) - {"baseline", "ifd", "ccafl"}: fit(smoke_config(m, name=m, dataset_opts=SMALL, **kw))
    return tmp

def prcc_test(runs) -> Path: return next((runs / "data").glob("synth-prcc-*")) / "prcc" / "rgb" / "test"

@pytest.mark.parametrize("method", REGISTERED)
def test_features_equal_fits(runs, method):
    "The features fit computed at its final evaluation (eval/embedding_sample.pt), from the images' paths alone."
    run = runs / "runs" / method
    sample = load_checkpoint(run / "eval" / "embedding_sample.pt")
    emb = load_model(run, device="cpu", batch_size=7)                # another batch composition than fit's
    assert emb.needs_masks == bool(load_methods()[method].needs_masks)
    f = emb(sample["paths"])
    assert f.shape == sample["features"].shape
    assert (f - sample["features"]).abs().max() < 1e-5
    assert torch.allclose(f.norm(dim=1), torch.ones(len(f)), atol=1e-5)
    # without the flipped view the features change: flip averaging is really applied as the run evaluated
    assert (load_model(run, device="cpu", flip=False)(sample["paths"][:4]) - f[:4]).abs().max() > 1e-4

def test_quick_gelu_is_rebuilt(runs):
    "The CCAFL run started from OpenAI-style weights: its model.json says QuickGELU, and a GELU rebuild gives other features."
    cfg, spec, state, _ = read_run(runs / "runs" / "ccafl")
    assert spec["quick_gelu"] is True
    sample = load_checkpoint(runs / "runs" / "ccafl" / "eval" / "embedding_sample.pt")
    emb = load_model(runs / "runs" / "ccafl", device="cpu")
    emb.net.model = build_for_inference(cfg, {**spec, "quick_gelu": False}, state)[1]
    assert (emb(sample["paths"][:4]) - sample["features"][:4]).abs().max() > 1e-4

def test_ifd_masks(runs, tmp_path):
    "IFD finds masks in the dataset layout, takes them explicitly, and without one names the image."
    emb = load_model(runs / "runs" / "ifd", device="cpu")
    sample = load_checkpoint(runs / "runs" / "ifd" / "eval" / "embedding_sample.pt")
    p = Path(sample["paths"][0])
    m = find_mask(p)
    assert m.is_file() and "masks" in m.parts
    lone = tmp_path / "lone.png"; shutil.copy(p, lone)
    with pytest.raises(FileNotFoundError, match="no parsing mask for .*lone.png"): emb([lone])
    assert (emb([lone], masks=[m]) - sample["features"][:1]).abs().max() < 1e-5
    arr = np.array(Image.open(m))
    assert (emb([Image.open(p)], masks=[arr]) - sample["features"][:1]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="pass masks="): emb([Image.open(p)])
    with pytest.raises(ValueError, match="mask is"): emb([lone], masks=[arr[:-2]])             # a mask of another size

def test_embed_folder_resumes(runs, tmp_path, monkeypatch):
    "Killed after its first chunk, a rerun embeds only the rest; the output equals an uninterrupted run's, atomically written."
    run, folder = runs / "runs" / "baseline", prcc_test(runs)
    emb = load_model(run, device="cpu")
    full = embed_folder(emb, folder, tmp_path / "full.npz", progress=False)
    calls, real = [], Embedder.__call__
    def dying(self, images, *a, **k):
        calls.append(len(images))
        if len(calls) == 2: raise KeyboardInterrupt
        return real(self, images, *a, **k)
    monkeypatch.setattr(Embedder, "__call__", dying)
    out = tmp_path / "feats.npz"
    with pytest.raises(KeyboardInterrupt): embed_folder(emb, folder, out, chunk=20, progress=False)
    assert not out.exists() and len(list((tmp_path / "feats.npz.parts").glob("chunk-*.npz"))) == 1
    calls.clear(); monkeypatch.setattr(Embedder, "__call__", real)
    counted = []
    monkeypatch.setattr(Embedder, "__call__", lambda self, images, *a, **k: counted.append(len(images)) or real(self, images, *a, **k))
    embed_folder(emb, folder, out, chunk=20, progress=False)
    a, b = read_features(full), read_features(out)
    n = len(a["paths"])
    assert sum(counted) == n - 20                                    # the first chunk was not computed again
    assert (a["paths"] == b["paths"]).all() and np.abs(a["features"] - b["features"]).max() < 1e-6
    assert not (tmp_path / "feats.npz.parts").exists()
    # PRCC's test layout: cameras from the A/B/C folders, identities from the pid folders
    assert set(b["camid"].tolist()) == {0, 1, 2} and (b["pid"] >= 0).all() and b["meta"]["layouts"] == ["prcc"]
    counted.clear(); embed_folder(emb, folder, out, chunk=20, progress=False)
    assert sum(counted) == 0                                         # a complete output of this model: nothing to do

def test_search_exact():
    "Blocked top-k equals a full sort; re-ranked search equals re_ranking's order; faiss probing every cell finds the same."
    g = torch.Generator().manual_seed(1)
    qf, gf = torch.randn(50, 24, generator=g), torch.randn(700, 24, generator=g)
    full = pairwise_distance(F.normalize(qf, dim=1), F.normalize(gf, dim=1))
    for block in (3, 64, 4096):
        d, i = topk_exact(qf, gf, 15, block=block)
        assert torch.equal(i, torch.argsort(full, dim=1, stable=True)[:, :15])
        assert torch.allclose(d, full.gather(1, i), atol=1e-6)
    d, i = search(qf, gf, 5, rerank=True)
    R = re_ranking(F.normalize(qf, dim=1), F.normalize(gf, dim=1))
    assert torch.equal(i, torch.argsort(R, dim=1, stable=True)[:, :5])
    pytest.importorskip("faiss")
    d, i = search(qf, gf, 15, index="faiss", factory="IVF{nlist},Flat", nprobe=10_000)
    assert torch.equal(i, topk_exact(qf, gf, 15)[1])

def test_cli_embed_search_export(runs, tmp_path, capsys):
    "reid-embed, reid-search (images and npz queries, JSON out) and reid-export with its onnxruntime check."
    run, test = runs / "runs" / "baseline", prcc_test(runs)
    embed_main([str(run), str(test / "A"), "-o", str(tmp_path / "g.npz")])
    embed_main([str(run), str(test / "B"), "-o", str(tmp_path / "q.npz")])
    q_img = list_images(test / "B")[0]
    search_main([str(tmp_path / "g.npz"), str(q_img), "-k", "5", "-o", str(tmp_path / "r1.json")])
    search_main([str(tmp_path / "g.npz"), str(tmp_path / "q.npz"), "-k", "5", "--rerank", "-o", str(tmp_path / "r2.json")])
    r1, r2 = json.loads((tmp_path / "r1.json").read_text()), json.loads((tmp_path / "r2.json").read_text())
    assert len(r1) == 1 and len(r1[0]["results"]) == 5 and r1[0]["pid"] == int(q_img.parent.name)
    assert len(r2) == len(read_features(tmp_path / "q.npz")["paths"])
    assert all(Path(x["path"]).is_file() for x in r1[0]["results"])
    # the same query through its npz row and as an image: the same ranking (re-ranking aside, r2 differs by design)
    search_main([str(tmp_path / "g.npz"), str(tmp_path / "q.npz"), "-k", "5", "-o", str(tmp_path / "r3.json")])
    row = next(r for r in json.loads((tmp_path / "r3.json").read_text()) if Path(r["query"]).name == q_img.name)
    assert [x["path"] for x in row["results"]] == [x["path"] for x in r1[0]["results"]]
    export_main([str(run), "-o", str(tmp_path / "m.onnx"), "--images", str(test / "A")])
    assert "real images" in capsys.readouterr().out

@pytest.mark.parametrize("method", REGISTERED)
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(runs, tmp_path, method, fmt):
    "Each method's retrieval path exported, run by onnxruntime (or torch.jit) on random inputs of two batch sizes and real images."
    pytest.importorskip("onnxruntime")
    emb = load_model(runs / "runs" / method, device="cpu")
    path = export(emb, tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt"), format=fmt)
    sample = load_checkpoint(runs / "runs" / method / "eval" / "embedding_sample.pt")
    diffs = check_export(path, emb, images=sample["paths"][:6])
    print(method, fmt, diffs)
    assert set(diffs) == {"random (batch 1)", "random (batch 3)", "real images"} and max(diffs.values()) <= 1e-4

def test_bad_input(runs, tmp_path):
    "A run without model.pt, a config of another version, an unreadable image, an image of the wrong shape: errors naming the file."
    src = runs / "runs" / "baseline"
    bad = tmp_path / "run"; shutil.copytree(src, bad)
    (bad / "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=f"run folder {bad} has no model.pt.*last.pt"): load_model(bad)
    shutil.copy(src / "model.pt", bad / "model.pt")
    cfg = json.loads((bad / "config.json").read_text()); cfg["option_of_a_later_version"] = 1
    (bad / "config.json").write_text(json.dumps(cfg))
    spec = json.loads((bad / "model.json").read_text()); spec["reid_nb"] = "9.0.0"
    (bad / "model.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"config.json does not fit reid_nb .* written by reid_nb 9.0.0.*option_of_a_later_version"): load_model(bad)
    (bad / "model.json").write_text(json.dumps({**spec, "format": 99}))
    with pytest.raises(ValueError, match="model.json is format 99"): load_model(bad)
    (bad / "model.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.json does not exist"): load_model(bad)
    (bad / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FileNotFoundError): load_model(bad)
    emb = load_model(src, device="cpu")
    broken = tmp_path / "imgs" / "broken.jpg"; broken.parent.mkdir(); broken.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(OSError, match="broken.jpg could not be read"): emb(broken.parent)
    with pytest.raises(OSError, match="broken.jpg could not be read"): embed_folder(emb, broken.parent, tmp_path / "x.npz", progress=False)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"): emb(torch.zeros(2, 1, 64, 32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"): emb(np.zeros((64, 32), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.jpg does not exist"): emb(tmp_path / "missing.jpg")
    with pytest.raises(FileNotFoundError, match="feature file"): read_features(tmp_path / "none.npz")

def test_legacy_run_without_model_json(runs, tmp_path):
    "A run written before model.json: its spec derived from the training data gives the same model, and the report's plots work."
    from reid_nb.engine import METHODS, TrainConfig, load_data
    from reid_nb.inference import legacy_spec
    from reid_nb.report import collect_runs
    from reid_nb.viz import plot_ifd_attention
    old = tmp_path / "runs" / "old"; shutil.copytree(runs / "runs" / "ifd", old)
    spec = json.loads((old / "model.json").read_text()); (old / "model.json").unlink()
    cfg = TrainConfig.from_dict(json.loads((old / "config.json").read_text()))
    derived = legacy_spec(cfg, load_data(cfg, METHODS["ifd"]))
    assert {k: derived[k] for k in ("method", "num_classes", "quick_gelu")} == {k: spec[k] for k in ("method", "num_classes", "quick_gelu")}
    with pytest.raises(FileNotFoundError, match="model.json does not exist"): read_run(old)
    assert read_run(old, derived)[0] == cfg
    run = next(r for r in collect_runs(tmp_path / "runs") if r.name == "old")
    plot_ifd_attention(run, n=2)

def test_load_from_a_training_checkpoint(runs):
    "checkpoints/last.pt (what a killed run leaves) loads with its own config; after the last epoch it is model.pt's model."
    run = runs / "runs" / "ifd"
    sample = load_checkpoint(run / "eval" / "embedding_sample.pt")
    a = load_model(run / "checkpoints" / "last.pt", device="cpu")
    assert a.weights.name == "last.pt" and a.cfg == read_run(run)[0]
    assert (a(sample["paths"][:5]) - sample["features"][:5]).abs().max() < 1e-5

def test_cli_user_mistakes_are_one_line_errors(runs, tmp_path, capsys):
    "-k 0, features of another model, a missing file, an unknown key: exit with one line naming it (a traceback with --debug)."
    from reid_nb.engine import main as train_main
    run, test = runs / "runs" / "baseline", prcc_test(runs)
    embed_main([str(run), str(test / "A"), "-o", str(tmp_path / "g.npz")])
    embed_main([str(runs / "runs" / "ifd"), str(test / "B"), "-o", str(tmp_path / "q_ifd.npz")])
    def one_line(fn, argv, match):
        with pytest.raises(SystemExit) as e: fn(argv)
        msg = str(e.value.code)
        assert re.search(match, msg) and "\n" not in msg and "Traceback" not in msg, msg
    one_line(search_main, [str(tmp_path / "g.npz"), str(tmp_path / "g.npz"), "-k", "0"], r"^reid-search: k must be at least 1")
    one_line(search_main, [str(tmp_path / "g.npz"), str(tmp_path / "q_ifd.npz")], r"^reid-search: .*q_ifd.npz .* embedded by different models")
    one_line(search_main, [str(tmp_path / "none.npz"), str(tmp_path / "g.npz")], r"^reid-search: .*none.npz")
    one_line(train_main, ["--set", "epochs=1", "--set", "epoch=2"], r"^reid-train: unknown key\(s\) 'epoch' \(did you mean 'epochs'\?\)")
    one_line(train_main, ["--config", str(tmp_path / "missing.json")], r"^reid-train: .*missing.json")
    with pytest.raises(ValueError, match="k must be at least 1"):                     # --debug: the exception itself
        search_main([str(tmp_path / "g.npz"), str(tmp_path / "g.npz"), "-k", "0", "--debug"])
    with pytest.raises(ValueError, match="8 dims but the gallery's 16"): search(torch.zeros(2, 8), torch.zeros(5, 16), rerank=True)
    # the .npz names its run by absolute path: image queries work from any folder; a run that is gone is named with --run
    import os
    cwd = os.getcwd(); os.chdir(tmp_path)
    try: search_main(["g.npz", str(list_images(test / "B")[0]), "-k", "3"])
    finally: os.chdir(cwd)
    d = dict(np.load(tmp_path / "g.npz")); meta = json.loads(str(d["meta"])); meta["weights"] = str(tmp_path / "gone" / "model.pt")
    d["meta"] = np.array(json.dumps(meta)); np.savez(tmp_path / "moved.npz", **d)
    one_line(search_main, [str(tmp_path / "moved.npz"), str(list_images(test / "B")[0])], r"^reid-search: .*gone/model.pt.*--run RUN")

def test_load_model_refuses_a_folder_mixing_two_runs(runs, tmp_path):
    "model.json records the run's config fingerprint and model.pt's hash: another run's config.json or model.pt is refused."
    src = runs / "runs" / "baseline"
    a = tmp_path / "a"; shutil.copytree(src, a)
    load_model(a, device="cpu")                                                   # the run itself loads
    cfg = json.loads((a / "config.json").read_text()); cfg["image_size"] = [32, 16]
    (a / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="come from different runs"): load_model(a, device="cpu")
    b = tmp_path / "b"; shutil.copytree(src, b)
    sd = load_checkpoint(b / "model.pt"); sd = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save(sd, b / "model.pt")                                                # weights of another training
    with pytest.raises(ValueError, match="not the model this run wrote"): load_model(b, device="cpu")
