"""A local stand-in for the Kubernetes API: the batch/v1 and core/v1 endpoints nasflow calls.

It is a real HTTP server on 127.0.0.1, driven by the real ``kubernetes`` client, and it
records every call as an RBAC (group, resource, verb) triple so tests can compare what the
code did with the Role in k8s/base.

Two modes:

* **Scripted** (no kubelet): Jobs are stored; a watch returns ``watch_events`` set by the test.
* **With a** :class:`FakeKubelet`: creating a Job really runs its pods, as processes on this
  machine, the way a kubelet would run them: the container's command, its ``env`` resolved as
  Kubernetes does (``fieldRef`` to the completion-index annotation, ``$(VAR)`` expansion,
  optional ``secretKeyRef``), a private ``/tmp`` (``TMPDIR``) per pod and no access to the
  creator's environment. Failed pods are replaced until ``backoffLimit`` is exceeded, then the
  Job fails and its pods are killed; deleting the Job kills them too. Watches block until the
  Job changes, as a real API server's do.

Usage (a plain module on ``sys.path`` for tests)::

    from fake_kube_api import FakeKubeApi, FakeKubelet
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client as k8s

NAMESPACE = "nasflow"
_INDEX_FIELD = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class _Pod:
    """One pod of an indexed Job, named as Kubernetes names them: <job>-<index>-<suffix>."""

    def __init__(self, job: str, index: int) -> None:
        self.name = f"{job}-{index}-{secrets.token_hex(3)[:5]}"
        self.job, self.index = job, index
        self.process: subprocess.Popen
        self.log: Path
        self.env: dict[str, str] = {}  # the container's environment as the kubelet resolved it
        self.oom_killed = False
        self.finished_at = ""  # RFC 3339, set when the kubelet first sees the process end

    def observe(self) -> int | None:
        code = self.process.poll()
        if code is not None and not self.finished_at:
            self.finished_at = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        return code

    def to_dict(self) -> dict[str, Any]:
        code = self.observe()
        phase = "Running" if code is None else ("Succeeded" if code == 0 else "Failed")
        status: dict[str, Any] = {"phase": phase}
        if code is not None:
            exit_code = 128 - code if code < 0 else code  # a signal shows as 128 + n, as in a pod
            reason = "OOMKilled" if self.oom_killed else ("Completed" if code == 0 else "Error")
            status["containerStatuses"] = [{
                "name": "worker", "ready": False, "restartCount": 0, "image": "nasflow", "imageID": "",
                "state": {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": self.finished_at}},
            }]  # fmt: skip
        return {
            "metadata": {"name": self.name, "namespace": NAMESPACE, "labels": {"job-name": self.job}},
            "status": status,
        }


class FakeKubelet:
    """Runs the pods of Jobs created on a :class:`FakeKubeApi` as local processes.

    Args:
        pods_dir: Each pod gets ``pods_dir/<pod name>/`` as its HOME, working folder and /tmp.
        secrets_data: Secrets by name, ``{name: {key: value}}``.
        oom_kill_indices: Completion indexes whose pods are killed as soon as they start, as the
            kernel's OOM killer would (exit code 137, reason ``OOMKilled``).
        start_when: Asked with a completion index before its pod starts; while it answers
            False the pod stays Pending, as on a cluster waiting for a node or for quota.
    """

    def __init__(
        self,
        pods_dir: Path,
        *,
        secrets_data: dict[str, dict[str, str]] | None = None,
        oom_kill_indices: set[int] | frozenset[int] = frozenset(),
        start_when: Callable[[int], bool] | None = None,
    ) -> None:
        self.pods_dir = Path(pods_dir)
        self.secrets = secrets_data or {}
        self.oom_kill_indices = set(oom_kill_indices)
        self.start_when = start_when
        self.pods: list[_Pod] = []

    def environment(self, container: dict[str, Any], index: int) -> dict[str, str]:
        """The container's environment, resolved the way the kubelet resolves it."""
        resolved: dict[str, str] = {}
        for entry in container.get("env", []):
            if "value" in entry:
                resolved[entry["name"]] = _VAR.sub(lambda m: resolved.get(m.group(1), m.group(0)), entry["value"])
                continue
            source = entry["valueFrom"]
            if "fieldRef" in source:
                if source["fieldRef"]["fieldPath"] != _INDEX_FIELD:
                    raise ValueError(f"the fake kubelet cannot resolve {source['fieldRef']['fieldPath']}")
                resolved[entry["name"]] = str(index)
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = self.secrets.get(ref["name"], {}).get(ref["key"])
                if value is None and not ref.get("optional"):
                    raise ValueError(f"secret {ref['name']}/{ref['key']} is missing")
                if value is not None:
                    resolved[entry["name"]] = value
        return resolved

    def start_pod(self, job: dict[str, Any], index: int) -> _Pod:
        name = job["metadata"]["name"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        command = list(container["command"])
        if command[0] == "python":  # the image's interpreter is this test's interpreter
            command[0] = sys.executable
        pod = _Pod(name, index)
        pod_dir = self.pods_dir / pod.name
        (pod_dir / "tmp").mkdir(parents=True)
        env = {"PATH": os.environ["PATH"], "HOME": str(pod_dir), "TMPDIR": str(pod_dir / "tmp")}
        env.update(self.environment(container, index))
        pod.log, pod.env = pod_dir / "log.txt", env
        with pod.log.open("w") as out:
            pod.process = subprocess.Popen(
                command, env=env, cwd=pod_dir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        if index in self.oom_kill_indices:
            pod.oom_killed = True
            os.killpg(pod.process.pid, signal.SIGKILL)
            pod.process.wait()
            pod.observe()
        self.pods.append(pod)
        return pod

    def kill_pods(self, job_name: str) -> None:
        for pod in self.pods:
            if pod.job == job_name and pod.observe() is None:
                os.killpg(pod.process.pid, signal.SIGKILL)
                pod.process.wait()
                pod.observe()

    def running(self) -> list[_Pod]:
        return [pod for pod in self.pods if pod.process.poll() is None]


class FakeKubeApi:
    """Jobs, pods and logs in namespace ``nasflow``; see the module docstring for the two modes."""

    def __init__(self, kubelet: FakeKubelet | None = None, host: str = "127.0.0.1") -> None:
        self.kubelet = kubelet
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: list[dict[str, Any]] = []  # scripted pods: {"job": name, "pod": {...}}
        self.logs: dict[str, str] = {}
        self.watch_events: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str, str]] = []  # (api group, resource, RBAC verb)
        self._version = 1
        self._changed = threading.Condition()
        self._events: list[tuple[int, dict[str, Any]]] = []
        self._stopping = False
        self._lock = threading.Lock()  # the Job controller and a DELETE never interleave
        # host: e.g. a container network's gateway, for a chief that runs in a container.
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        if kubelet is not None:
            threading.Thread(target=self._run_kubelet, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._stopping = True
        if self.kubelet is not None:
            for name in list(self.jobs):
                self.kubelet.kill_pods(name)
        with self._changed:
            self._changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def api_client(self) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        configuration.host = self.url
        return k8s.ApiClient(configuration)

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig file pointing at this server (what ``load_kube_config`` reads)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": NAMESPACE}}],
        }))  # fmt: skip
        return path

    # --- the kubelet and the Job controller -------------------------------------------------
    def _bump(self, job: dict[str, Any], event_type: str = "MODIFIED") -> None:
        with self._changed:
            self._version += 1
            job["metadata"]["resourceVersion"] = str(self._version)
            self._events.append((self._version, {"type": event_type, "object": json.loads(json.dumps(job))}))
            self._changed.notify_all()

    def _run_kubelet(self) -> None:
        assert self.kubelet is not None
        while not self._stopping:
            with self._lock:
                for name, job in list(self.jobs.items()):
                    if not job.get("status", {}).get("conditions"):
                        self._reconcile(name, job)
            time.sleep(0.2)

    def _reconcile(self, name: str, job: dict[str, Any]) -> None:
        kubelet = self.kubelet
        pods = [pod for pod in kubelet.pods if pod.job == name]
        for pod in pods:
            pod.observe()
        failed = sum(1 for pod in pods if pod.process.poll() not in (None, 0))
        succeeded = {pod.index for pod in pods if pod.process.poll() == 0}
        completions = job["spec"]["completions"]
        status = job.setdefault("status", {})
        before = dict(status)
        status.update(failed=failed, succeeded=len(succeeded), active=sum(1 for p in pods if p.process.poll() is None))
        if failed > job["spec"]["backoffLimit"]:
            kubelet.kill_pods(name)
            status["conditions"] = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                     "message": "Job has reached the specified backoff limit"}]  # fmt: skip
        elif len(succeeded) == completions:
            status["conditions"] = [{"type": "Complete", "status": "True", "reason": "", "message": ""}]
        else:
            for index in range(completions):
                if index in succeeded or any(p.index == index and p.process.poll() is None for p in pods):
                    continue
                if kubelet.start_when is not None and not kubelet.start_when(index):
                    continue  # Pending
                kubelet.start_pod(job, index)  # first start, or the replacement of a failed pod
        if status != before:
            self._bump(job)

    # --- HTTP ---------------------------------------------------------------------------------
    def _watch(self, resource_version: int, timeout_s: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                newer = [event for version, event in self._events if version > resource_version]
                remaining = deadline - time.monotonic()
                if newer or remaining <= 0 or self._stopping:
                    return newer
                self._changed.wait(timeout=min(remaining, 0.5))

    def _pod_list(self, selector: str) -> list[dict[str, Any]]:
        scripted = [p["pod"] for p in self.pods if selector == f"job-name={p['job']}"]
        running = [pod.to_dict() for pod in (self.kubelet.pods if self.kubelet else []) if selector == f"job-name={pod.job}"]
        return scripted + running

    def _pod_log(self, name: str) -> str:
        for pod in self.kubelet.pods if self.kubelet else []:
            if pod.name == name:
                return pod.log.read_text(errors="replace")
        return self.logs.get(name, "")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, payload: Any, content_type: str = "application/json") -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                segments = parts.path.strip("/").split("/")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                if segments[:5] == ["apis", "batch", "v1", "namespaces", NAMESPACE] and segments[5] == "jobs":
                    self._jobs(method, segments[6] if len(segments) > 6 else None, query, body)
                elif segments[:4] == ["api", "v1", "namespaces", NAMESPACE] and segments[4] == "pods":
                    if len(segments) == 7 and segments[6] == "log":
                        api.calls.append(("", "pods/log", "get"))
                        lines = api._pod_log(segments[5]).splitlines()[-int(query.get("tailLines", 10**6)) :]
                        self._reply(200, "\n".join(lines).encode(), "text/plain")
                    else:
                        api.calls.append(("", "pods", "list"))
                        items = api._pod_list(query.get("labelSelector", ""))
                        self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
                else:
                    self._reply(404, {"kind": "Status", "code": 404})

            def _jobs(self, method: str, name: str | None, query: dict[str, str], body: Any) -> None:
                if method == "POST":
                    api.calls.append(("batch", "jobs", "create"))
                    job_name = body["metadata"]["name"]
                    if job_name in api.jobs:
                        self._reply(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
                        return
                    body["metadata"].update(uid=f"job-uid-{len(api.jobs) + 1}", resourceVersion=str(api._version))
                    api.jobs[job_name] = body
                    self._reply(201, body)
                elif method == "DELETE":
                    api.calls.append(("batch", "jobs", "delete"))
                    with api._lock:
                        job = api.jobs.pop(name, None)
                        if job is not None and api.kubelet is not None:
                            api.kubelet.kill_pods(name)
                            api._bump(job, "DELETED")
                    self._reply(200, {"kind": "Status", "status": "Success"})
                elif name is not None:
                    api.calls.append(("batch", "jobs", "get"))
                    if name in api.jobs:
                        self._reply(200, api.jobs[name])
                    else:
                        self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                elif query.get("watch") in ("true", "True", "1"):
                    api.calls.append(("batch", "jobs", "watch"))
                    if api.kubelet is None:
                        events, api.watch_events = api.watch_events, []
                    else:
                        since = int(query.get("resourceVersion") or 0)
                        wanted = query.get("fieldSelector", "").removeprefix("metadata.name=")
                        events = [
                            event
                            for event in api._watch(since, float(query.get("timeoutSeconds") or 30))
                            if event["object"]["metadata"]["name"] == wanted
                        ]
                    self._reply(200, b"".join(json.dumps(e).encode() + b"\n" for e in events))
                else:
                    api.calls.append(("batch", "jobs", "list"))
                    wanted = query.get("fieldSelector", "").removeprefix("metadata.name=")
                    labels = dict(item.split("=", 1) for item in query.get("labelSelector", "").split(",") if item)
                    items = [
                        j for n, j in api.jobs.items()
                        if (not wanted or n == wanted)
                        and labels.items() <= j["metadata"].get("labels", {}).items()
                    ]  # fmt: skip
                    self._reply(200, {"kind": "JobList", "apiVersion": "batch/v1",
                                      "metadata": {"resourceVersion": str(api._version)}, "items": items})  # fmt: skip

            def do_GET(self) -> None:  # noqa: N802
                self._route("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._route("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._route("DELETE")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

        return Handler
