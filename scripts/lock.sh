#!/usr/bin/env bash
# Rewrites requirements/*.lock, the pinned and hashed dependency sets that `make`
# (the venv), the image build and CI install with pip's hash-checking mode:
#   runtime.lock  [project] dependencies: what the image ships
#   dev.lock      the same plus the dev extra: the venv of `make` and CI
#   build.lock    the build backend (requirements/build.in): builds vpnctl's wheel
# Run it after changing a dependency in pyproject.toml; it resolves against the index
# for this interpreter (CPython 3.11 on Linux, as bookworm's python3 in the image).
# `--upgrade` moves every pin to the newest release allowed; without it, pins stay
# where they are unless pyproject.toml no longer allows them.
set -euo pipefail
cd "$(dirname "$0")/.."
compile=(.venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras
         --no-emit-index-url --no-emit-find-links --resolver=backtracking "$@")
export CUSTOM_COMPILE_COMMAND="scripts/lock.sh"
"${compile[@]}" --output-file requirements/runtime.lock pyproject.toml
"${compile[@]}" --extra dev --output-file requirements/dev.lock pyproject.toml
"${compile[@]}" --output-file requirements/build.lock requirements/build.in
