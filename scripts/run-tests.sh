#!/usr/bin/env bash
# Runs the whole pytest suite. pytest exits 5 when it collected nothing: that is a
# failure here, loudly, never a silent pass.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "run-tests: FAILED: pytest collected no tests" >&2
  exit 1
fi
exit $rc
