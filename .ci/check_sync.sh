#!/usr/bin/env bash
# Fails when the generated code or README disagrees with the notebooks, or a notebook is not clean: it judges whether
# nbdev_export and nbdev_clean would change anything (file contents before and after), not whether the tree is committed,
# so it can run on work in progress. Needs nbdev_export/nbdev_clean on PATH; changes nothing that was in sync.
set -euo pipefail
cd "$(dirname "$0")/.."
snap() { find "$1" -type f \( -name '*.py' -o -name '*.ipynb' \) -not -path '*/.ipynb_checkpoints/*' -not -path '*/__pycache__/*' -print0 \
         | sort -z | xargs -0 sha256sum; }
fail=0
before=$(snap reid_nb); nbdev_export; after=$(snap reid_nb)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev_export changed reid_nb/ — a module and its notebook disagree (now exported; review and commit):"
  diff <(echo "$before") <(echo "$after") | sed -n 's/^> [0-9a-f]*  /  /p'; fail=1
fi
before=$(snap nbs); nbdev_clean; after=$(snap nbs)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev_clean changed nbs/ — notebooks must be committed clean (make clean-nbs; now cleaned):"
  diff <(echo "$before") <(echo "$after") | sed -n 's/^> [0-9a-f]*  /  /p'; fail=1
fi
if ! python tools/nb2readme.py --check; then fail=1; fi
[ $fail = 0 ] && echo "sync: notebooks, modules and README agree"
exit $fail
