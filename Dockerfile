# One image for the controller and every agent role:
#   controller:  vpnctl run
#   agent roles: python -m agent node|server|apiserver --config FILE
# openvpn and iproute2/iptables come from Debian, like in the tests.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY vpnctl ./vpnctl
COPY agent ./agent
COPY certs ./certs
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends openvpn iproute2 iptables nftables conntrack \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --system --uid 65532 --no-create-home vpnctl
# The controller runs unprivileged; the agent roles need NET_ADMIN and /dev/net/tun,
# granted by their pod specs (the DaemonSet and the server Deployment), not here.
USER 65532
ENTRYPOINT ["vpnctl"]
CMD ["run"]
