# One image for the controller and every agent role:
#   controller:  vpnctl run
#   agent roles: python -m agent node|server|apiserver --config FILE
#
# BASE_IMAGE contract: a Debian bookworm root filesystem with apt. The first stage
# installs whatever of RUNTIME_PACKAGES is missing, so the public default
# (debian:bookworm-slim, from a registry) and the base `make image` makes here from
# Debian's packages with mmdebstrap (scripts/build-image.py, which has them all
# already and no registry to pull from) go through the same file unchanged.
#
# Python dependencies are exactly requirements/runtime.lock (and the build backend,
# requirements/build.lock), installed in pip's hash-checking mode: from PyPI by default;
# `make image` instead hands over those very wheels, downloaded and hash-checked on the
# host (build argument WHEELHOUSE and a volume mounted only during RUN), so no host CA
# bundle or credential ever enters a layer.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${BASE_IMAGE} AS runtime
ARG RUNTIME_PACKAGES="python3 python3-venv openvpn iproute2 iptables nftables conntrack ca-certificates"
# POSIX sh on purpose: buildah ignores SHELL for OCI-format images.
# Versions come from the bookworm suite of the base; pinning them here would break with
# every security update of the base (DL3008). $missing is split into package names on
# purpose (SC2086).
# hadolint ignore=DL3008,SC2086
RUN missing="" \
 && for p in ${RUNTIME_PACKAGES}; do \
      [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] \
        || missing="$missing $p"; \
    done \
 && if [ -n "$missing" ]; then \
      apt-get update \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
      && apt-get clean \
      && rm -rf /var/lib/apt/lists/*; \
    fi

FROM runtime AS build
# Empty: dependencies come from PyPI. `make image` sets it to a directory of the locked
# wheels, mounted only while this RUN runs: no index is contacted.
ARG WHEELHOUSE=""
WORKDIR /src
COPY requirements/runtime.lock requirements/build.lock ./requirements/
COPY pyproject.toml setup.py ./
COPY vpnctl ./vpnctl
COPY agent ./agent
COPY certs ./certs
COPY telemetry ./telemetry
# The wheel leaves out the lab, the test environment and test samples (pyproject.toml,
# setup.py), so installing it keeps them out of the image.
# Every dependency and the build backend come from the locks, hash-checked; vpnctl's own
# wheel is then built with that backend (no build isolation, which would fetch an
# unpinned one) and installed without resolving anything.
# pip and setuptools are only needed here; the runtime keeps none (23 MB less).
RUN if [ -n "${WHEELHOUSE}" ]; then set -- --no-index --find-links "${WHEELHOUSE}"; fi \
 && python3 -m venv /opt/vpnctl \
 && /opt/vpnctl/bin/pip install --no-cache-dir --disable-pip-version-check "$@" \
      --require-hashes -r /src/requirements/runtime.lock -r /src/requirements/build.lock \
 && /opt/vpnctl/bin/pip install --no-cache-dir --disable-pip-version-check "$@" \
      --no-deps --no-build-isolation /src \
 && /opt/vpnctl/bin/python -m pip uninstall --yes --quiet pip setuptools

FROM runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/vpnctl/vpnctl
# An SPDX expression; NOASSERTION while pyproject.toml declares no license
# (scripts/build-image.py passes what it declares).
ARG LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="vpnctl" \
      org.opencontainers.image.description="vpnctl controller and agent roles (node, server, apiserver)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}"
COPY --from=build /opt/vpnctl /opt/vpnctl
ENV PATH=/opt/vpnctl/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 65532 --user-group --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin vpnctl
# The controller runs unprivileged; the agent roles need NET_ADMIN and /dev/net/tun,
# granted by their pod specs (the DaemonSet and the server Deployment), not here.
USER 65532:65532
ENTRYPOINT ["vpnctl"]
CMD ["run"]
