"""Render nbs/index.ipynb to README.md without quarto (nbdev_readme needs the quarto binary, which is not on PyPI-only
machines). Markdown cells are copied; code cells become ```python blocks unless marked `#| hide`; outputs are dropped.
A markdown line `{{include studies/results/<name>/claims.md}}` is replaced by that file (a study's generated claims), so the
README's figures come from the study outputs, never typed.
`--check` exits 1 when README.md is out of date."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def _include(m: re.Match) -> str:
    f = ROOT / m.group(1).strip()
    if not f.is_file(): sys.exit(f"nbs/index.ipynb includes {m.group(1)!r}, which does not exist (run its study, see studies/)")
    return f.read_text(encoding="utf-8").strip()

def render(nb_path: Path) -> str:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    out = []
    for c in nb["cells"]:
        src = "".join(c["source"]).strip()
        if not src: continue
        if c["cell_type"] == "markdown": out.append(re.sub(r"\{\{include ([^}]+)\}\}", _include, src))
        elif c["cell_type"] == "code":
            lines = src.splitlines()
            if any(l.replace(" ", "").startswith(("#|hide", "#|export", "#|default_exp")) for l in lines): continue
            out.append("```python\n" + "\n".join(lines) + "\n```")
    return "<!-- generated from nbs/index.ipynb by tools/nb2readme.py: edit the notebook, then `make readme` -->\n\n" + "\n\n".join(out) + "\n"

if __name__ == "__main__":
    text, readme = render(ROOT / "nbs" / "index.ipynb"), ROOT / "README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text(encoding="utf-8") != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run `make readme` and commit it")
    else: readme.write_text(text, encoding="utf-8")
