# The two commands a newcomer runs are `make lab` and `make test`. Every target
# installs what it needs, idempotently.
SHELL := /bin/bash
PY    := .venv/bin/python
# The venv holds exactly requirements/dev.lock (pinned, hashed; scripts/lock.sh writes it):
# a change to it or to pyproject.toml re-installs.
LOCK  := requirements/dev.lock
VENV_STAMP := .venv/.installed-$(shell cat pyproject.toml $(LOCK) | sha1sum | cut -c1-12)
NODES ?= 3

.PHONY: lab lab-down test lint deps system image-tools node-tools image k8s-bins node-bins konnectivity-bins charts bench bench-dataplane clean

lab: deps image-tools node-tools
	$(PY) -m vpnctl lab up --nodes $(NODES)

lab-down: deps
	$(PY) -m vpnctl lab down

test: deps k8s-bins image-tools node-tools node-bins konnectivity-bins lint
	scripts/run-tests.sh

lint: deps
	.venv/bin/ruff check .
	.venv/bin/mypy vpnctl agent certs telemetry tests bench
	.venv/bin/lint-imports
	.venv/bin/hadolint Dockerfile

deps: system $(VENV_STAMP)

system:
	@scripts/install-system.sh

$(VENV_STAMP): pyproject.toml $(LOCK)
	@test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f .venv/.installed-*
	@touch $@

image-tools:
	@scripts/install-image-tools.sh

# The one image of the controller and every agent role, built here from Debian's
# packages without a registry; cached in ~/.cache/vpnctl/images by a hash of its inputs.
image: deps image-tools
	$(PY) scripts/build-image.py

k8s-bins: deps
	$(PY) -m vpnctl.testenv.build $(if $(WITH_KUBELET),--with-kubelet)

# Konnectivity (apiserver-network-proxy, pinned in vpnctl/testenv/pinned_versions.py), the peer path
# the benchmark compares with: server and agent from their Go module (once, then cached;
# under a minute on the Go build cache k8s-bins warmed). tests/kube/test_konnectivity.py runs them.
konnectivity-bins: deps
	$(PY) -m vpnctl.testenv.build --with-konnectivity

# Real tenant nodes (vpnctl/lab/realnode, tests/nodes): containerd, runc, CNI plugins,
# iptables, conntrack, busybox-static and gcc from Debian ...
node-tools:
	@scripts/install-node-tools.sh

# ... and kubelet, kube-proxy, kube-scheduler and metrics-server from Go modules.
node-bins: deps
	$(PY) -m vpnctl.testenv.build --with-nodes

charts: deps k8s-bins
	$(PY) -m vpnctl.charts package --out dist/

bench: deps k8s-bins
	$(PY) -m bench

bench-dataplane: deps
	$(PY) -m bench.dataplane

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
