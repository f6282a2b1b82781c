"""The tenant's admission webhook: a small HTTPS server the apiserver calls, run in a pod.

It is what the hosted apiserver must reach *through* vpnctl's tunnel (a Service's
ClusterIP behind a node), so its answer is easy to tell apart: everything is admitted
except objects labelled ``vpnctl.io/deny: "true"``.

This file is shipped as it is in a ConfigMap (``workloads.py``) and run with the
image's ``python3``, so it imports the standard library only and nothing of vpnctl:

    python3 admission_server.py --port 8443 --cert /tls/tls.crt --key /tls/tls.key

Routes: ``POST /validate`` (AdmissionReview v1) and ``GET /healthz``. Logs are logfmt,
one event per line, on stderr, with the keys vpnctl's own binaries start with
(``ts level logger event``; telemetry/logs.py, which this file cannot import).
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import json
import signal
import ssl
import sys
import threading
from collections.abc import Sequence
from typing import Any

DENY_LABEL = "vpnctl.io/deny"
ADMISSION_API_VERSION = "admission.k8s.io/v1"
MAX_BODY = 3 * 1024 * 1024  # the apiserver's own limit on a request object is ~3 MiB


def admission_response(review: Any) -> dict[str, Any]:
    """The AdmissionReview v1 answer to REVIEW; raises ValueError if it is malformed.

    Allows everything except objects labelled `vpnctl.io/deny: "true"`.
    """
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise ValueError('body is not an AdmissionReview (want "kind": "AdmissionReview")')
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ValueError("AdmissionReview has no request.uid")
    obj = request.get("object") or request.get("oldObject") or {}
    labels = obj.get("metadata", {}).get("labels") if isinstance(obj, dict) else None
    denied = isinstance(labels, dict) and labels.get(DENY_LABEL) == "true"
    response: dict[str, Any] = {"uid": request["uid"], "allowed": not denied}
    if denied:
        name = obj.get("metadata", {}).get("name", "<unnamed>")
        response["status"] = {
            "code": 403,
            "reason": "Forbidden",
            "message": f"object {name!r} is labelled {DENY_LABEL}=true; "
            f"the lab's webhook denies it (remove the label to admit it)",
        }
    return {
        "apiVersion": review.get("apiVersion", ADMISSION_API_VERSION),
        "kind": "AdmissionReview",
        "response": response,
    }


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-._/:@" for c in text):
        return text
    return json.dumps(text)


def log_event(event: str, *, level: str = "info", **fields: object) -> None:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
    parts = [f"ts={now.replace('+00:00', 'Z')}", f"level={level}", "logger=admission_server"]
    parts.append(f"event={event}")
    parts += [f"{k}={_logfmt_value(v)}" for k, v in fields.items()]
    print(" ".join(parts), file=sys.stderr, flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the apiserver reuses its connection
    timeout = 30  # seconds a connection may idle or stall

    def setup(self) -> None:
        super().setup()
        # In this connection's own thread, so a stalled handshake blocks no one else.
        self.request.do_handshake()

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/validate":
            self._send(404, b"not found\n", "text/plain")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(400, f"bad Content-Length (0..{MAX_BODY})\n".encode(), "text/plain")
            return
        body = self.rfile.read(length)
        try:
            answer = admission_response(json.loads(body))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            log_event("admission_bad_request", level="warning", error=exc)
            self._send(400, f"bad AdmissionReview: {exc}\n".encode(), "text/plain")
            return
        response = answer["response"]
        # The peer shows the path: behind a Service it is whoever masqueraded the call.
        log_event(
            "admission_reviewed",
            uid=response["uid"],
            allowed=response["allowed"],
            peer=self.client_address[0],
        )
        self._send(200, json.dumps(answer).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one event per review is logged above; the access log adds nothing


class TLSServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(address, Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        log_event("webhook_connection_failed", level="warning", peer=client_address[0], error=error)


def make_server(host: str, port: int, *, cert: str, key: str) -> TLSServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return TLSServer((host, port), context)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--cert", required=True, help="serving certificate (PEM)")
    parser.add_argument("--key", required=True, help="its private key (PEM)")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.host, args.port, cert=args.cert, key=args.key)
    except (OSError, ssl.SSLError) as exc:
        log_event(
            "webhook_start_failed", level="error", address=f"{args.host}:{args.port}", error=exc
        )
        return 1

    def stop(signum: int, _frame: object) -> None:
        # shutdown() waits for serve_forever() to return: call it from another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log_event("webhook_listening", address=f"{args.host}:{server.server_port}")
    with server:
        server.serve_forever()
    log_event("webhook_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
