#!/usr/bin/env bash
# Fails when the generated code or README disagrees with the notebooks, or a notebook is not clean.
# Needs nbdev_export/nbdev_clean on PATH and a git checkout; changes nothing that was in sync.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
fail=0
nbdev_export
if [ -n "$(git status --porcelain -- reid_nb)" ]; then
  echo "FAIL: nbdev_export changed reid_nb/ — a module and its notebook disagree:"; git status --porcelain -- reid_nb
  git --no-pager diff --stat -- reid_nb; fail=1
fi
nbdev_clean
if [ -n "$(git status --porcelain -- nbs)" ]; then
  echo "FAIL: nbdev_clean changed nbs/ — commit notebooks cleaned (make clean-nbs):"; git status --porcelain -- nbs; fail=1
fi
if ! python tools/nb2readme.py --check; then fail=1; fi
[ $fail = 0 ] && echo "sync: notebooks, modules and README agree"
exit $fail
