"""A local stand-in for the few KFP v2beta1 REST endpoints nasflow.cli.remote uses.

It is a real HTTP server (``http.server`` in a thread on 127.0.0.1, a free port), so the real
``kfp.Client`` and its generated ``kfp_server_api`` code make real requests to it. Endpoints:

- ``GET  /apis/v2beta1/healthz``
- ``GET  /apis/v2beta1/experiments`` (honours the ``display_name`` EQUALS filter)
- ``POST /apis/v2beta1/experiments``
- ``POST /apis/v2beta1/runs`` and ``GET /apis/v2beta1/runs/{id}`` (``submit --wait``)
- ``POST /apis/v2beta1/recurringruns``

Every request is recorded (method, path, query, headers with lower-case names, JSON body) for assertions. If
``required_token`` is set, requests without ``Authorization: Bearer <token>`` get HTTP 401.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: Any


@dataclass
class FakeKfpServer:
    required_token: str | None = None
    requests: list[Recorded] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: State a run reports after its first look (RUNNING); e.g. "FAILED" to test a failure.
    final_run_state: str = "SUCCEEDED"
    #: Called with each created run (its JSON) — e.g. to do what the pipeline's steps would.
    on_run_created: Callable[[dict[str, Any]], None] | None = None
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKfpServer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeKfpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == path]

    # -- endpoint logic -------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
        if method == "GET" and path == "/apis/v2beta1/experiments":
            wanted = None
            if "filter" in query:
                for predicate in json.loads(query["filter"][0]).get("predicates", []):
                    if predicate.get("key") == "display_name":
                        wanted = predicate.get("stringValue") or predicate.get("string_value")
            found = [e for e in self.experiments if wanted is None or e["display_name"] == wanted]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if method == "POST" and path == "/apis/v2beta1/experiments":
            experiment = {
                "experiment_id": str(uuid.uuid4()),
                "display_name": body["display_name"],
                "storage_state": "AVAILABLE",
            }
            self.experiments.append(experiment)
            return 200, experiment
        if method == "POST" and path == "/apis/v2beta1/runs":
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
            self.runs[run["run_id"]] = run
            if self.on_run_created is not None:
                self.on_run_created(run)
            return 200, run
        if method == "GET" and path.startswith("/apis/v2beta1/runs/"):
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run is None:
                return 404, {"error": "run not found", "code": 5}
            # First look: still running; afterwards: the outcome the test chose.
            run["state"] = "RUNNING" if run["state"] == "PENDING" else self.final_run_state
            return 200, run
        if method == "POST" and path == "/apis/v2beta1/recurringruns":
            return 200, {**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"}
        return 404, {"error": f"fake KFP server has no {method} {path}", "code": 5}


def _handler_for(server: FakeKfpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            server.requests.append(
                Recorded(method, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body)
            )
            if server.required_token and self.headers.get("Authorization") != f"Bearer {server.required_token}":
                status, payload = 401, {"error": "missing or wrong bearer token", "code": 16}
            else:
                status, payload = server.handle(method, parts.path, parse_qs(parts.query), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._serve("GET")

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
            return

    return Handler
