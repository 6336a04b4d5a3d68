"""Dataset 'crops': a flat folder of one's own crops, `<root>/{train,query,gallery}/p<pid>_c<cam>_<n>.jpg`, with the parser that
lets reid_nb's offline tools (reid-embed, reid-search, reid-eval) read identity and camera from the same names."""
import re
from pathlib import Path

from reid_nb.data import IMG_EXTS, Protocol, ReIDData, Sample, register_dataset

NAME = re.compile(r"p(\d+)_c(\d+)_")
LAYOUT = "<root>/{train,query,gallery}/p<pid>_c<cam>_<n>.jpg"


def parse(path):
    "(pid, camera, clothes) of a crop's file name, or None where it is not one."
    m = NAME.match(Path(path).name)
    return None if m is None else (int(m[1]), int(m[2]), -1)


@register_dataset("crops", parse=parse)
def load_crops(root) -> ReIDData:
    root = Path(root) / "crops" if (Path(root) / "crops" / "train").is_dir() else Path(root)
    def split(name):
        d = root / name
        files = sorted(f for f in d.glob("*") if f.suffix.lower() in IMG_EXTS) if d.is_dir() else []
        bad = [f for f in files if parse(f) is None]
        if not files or bad:
            raise FileNotFoundError(f"crops: {d} holds {'no images' if not files else f'{bad[0].name}, not named p<pid>_c<cam>_<n>'}; expected {LAYOUT}")
        return [(str(f), *parse(f)[:2]) for f in files]
    train, query, gallery = split("train"), split("query"), split("gallery")
    label = {p: i for i, p in enumerate(sorted({p for _, p, _ in train}))}
    mk = lambda rows, lab: [Sample(f, lab(p), c, lab(p)) for f, p, c in rows]
    q, g = mk(query, int), mk(gallery, int)
    return ReIDData("crops", root, mk(train, label.__getitem__), q, g, {"standard": Protocol("standard", q, g)}, has_clothes=False)
