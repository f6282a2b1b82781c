"""Find key material in text that people read: logs, Events, status, reprs.

``scan(blobs, secrets)`` looks for each secret value in each named blob, in the forms a
leak takes: the value itself, its base64 (as in a Secret or a kubeconfig's ``*-data``),
and each line of a private key's or tls-crypt-v2 key's PEM body (a key split across log
lines, or quoted in part, still leaks).
It also flags the markers of key material whatever the value (``PRIVATE KEY``, the
tls-crypt-v2 markers), so a key we did not think to list is caught too.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Markers of key material whose mere presence is a finding.
MARKERS = (
    "PRIVATE KEY-----",
    "-----BEGIN OpenVPN tls-crypt-v2",
)

_MIN_FRAGMENT = 24  # shorter PEM lines (the last one) could match by chance


@dataclass(frozen=True)
class Finding:
    blob: str  # the name of the text it was found in
    secret: str  # the name of the secret (or "marker")
    form: str  # how it appeared: "value", "base64", "pem line", or the marker
    at: int  # offset in the blob

    def __str__(self) -> str:
        return f"{self.secret} ({self.form}) in {self.blob} at offset {self.at}"


_PEM_BLOCK = re.compile(r"-----BEGIN ([^\n]+?)-----(.*?)-----END \1-----", re.DOTALL)


def _forms(value: str | bytes) -> list[tuple[str, str]]:
    raw = value.encode() if isinstance(value, str) else value
    text = raw.decode("utf-8", "replace")
    forms = [("value", text), ("base64", base64.b64encode(raw).decode())]
    # The base64 inside a secret PEM block, line by line: a key split across log lines
    # or quoted in part still leaks. Only secret blocks count: certificates are public,
    # and so is the last line of a private key (for EC keys, mostly the public point,
    # which a certificate or CSR in a log may carry too).
    for label, body in _PEM_BLOCK.findall(text):
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        if "PRIVATE KEY" in label:
            lines = lines[:-1]
        elif "tls-crypt" not in label:
            continue
        forms += [("pem line", line) for line in lines if len(line) >= _MIN_FRAGMENT]
    return [(form, needle) for form, needle in forms if needle.strip()]


def scan(
    blobs: Mapping[str, str], secrets: Mapping[str, str | bytes], *, markers: bool = True
) -> list[Finding]:
    """Every place a secret (or, with ``markers``, a key-material marker) shows up."""
    findings: list[Finding] = []
    needles = [(name, form, needle) for name, v in secrets.items() for form, needle in _forms(v)]
    if markers:
        needles += [("marker", marker, marker) for marker in MARKERS]
    for blob_name, blob in blobs.items():
        for name, form, needle in needles:
            if needle not in blob:  # the fast path, for large logs
                continue
            for match in re.finditer(re.escape(needle), blob):
                findings.append(Finding(blob_name, name, form, match.start()))
    return findings


def blobs_of(prefix: str, texts: Iterable[str]) -> dict[str, str]:
    """Name a sequence of texts (``events[0]``, ...) for ``scan``."""
    return {f"{prefix}[{i}]": text for i, text in enumerate(texts)}
