#!/usr/bin/env bash
# Runs the whole pytest suite. pytest exits 5 when it collected nothing: that is a
# failure here, loudly, never a silent pass.
#
# With no arguments: the unit tier first, in a shuffled order (pytest-randomly; the seed
# is printed in pytest's header, and TEST_SEED=N replays one), then every other tier in
# file order. With arguments: one pytest run with exactly those arguments.
set -uo pipefail
cd "$(dirname "$0")/.."

run() {
  .venv/bin/python -m pytest "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then
    echo "run-tests: FAILED: pytest collected no tests ($*)" >&2
    return 1
  fi
  return $rc
}

if [ $# -gt 0 ]; then
  run "$@"
  exit $?
fi

seed="${TEST_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "run-tests: unit tier shuffled with --randomly-seed=$seed (replay: TEST_SEED=$seed)"
run -p randomly --randomly-seed="$seed" tests/unit || exit $?
run tests --ignore=tests/unit
