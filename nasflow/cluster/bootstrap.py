"""How a worker pod gets what only the chief pod has: the search spec and the prepared dataset.

On a cluster the chief is a KFP task: its dataset is a KFP input artifact downloaded into the
chief pod, and its work folder is local to that pod. Worker pods share neither, and asking
for a ReadWriteMany volume or object-store credentials in every worker would make the fan-out
depend on what storage a cluster happens to offer. So the chief serves both, read-only, over
plain HTTP on :data:`nasflow.cluster.job.BOOTSTRAP_PORT` (the NetworkPolicy admits only worker
pods), and a worker fetches them once before it starts pulling trials from the oracle:

* ``GET /spec.json``: the :class:`~nasflow.cluster.spec.WorkerSpec` plus the dataset's SHA-256;
* ``GET /dataset.tar.gz``: the prepared dataset folder.

The worker checks the digest, unpacks with tarfile's ``data`` filter (no absolute paths, no
links out of the folder), and points the spec at its own copies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nasflow.cluster.spec import WorkerSpec
from nasflow.errors import SearchError

logger = logging.getLogger(__name__)

SPEC_PATH = "/spec.json"
DATASET_PATH = "/dataset.tar.gz"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BootstrapServer:
    """Serve a worker spec and its dataset, read-only, until :meth:`close`.

    Args:
        spec: The spec the workers run; its ``dataset_dir`` is packed once, here.
        host: Address to bind (``0.0.0.0`` in a pod, ``127.0.0.1`` in tests).
        port: TCP port (:data:`nasflow.cluster.job.BOOTSTRAP_PORT` on a cluster).
        pack_dir: Where to write the packed dataset.
    """

    def __init__(self, spec: WorkerSpec, *, host: str, port: int, pack_dir: str | Path) -> None:
        dataset_dir = Path(spec.dataset_dir)
        if not dataset_dir.is_dir():
            raise SearchError(f"cannot serve the dataset to workers: {dataset_dir} is not a folder")
        pack_dir = Path(pack_dir)
        pack_dir.mkdir(parents=True, exist_ok=True)
        self.archive = pack_dir / "dataset.tar.gz"
        with tarfile.open(self.archive, "w:gz") as archive:
            archive.add(dataset_dir, arcname="dataset")
        self.spec_document = json.dumps(
            {"spec": asdict(spec), "dataset_sha256": _sha256(self.archive)}, default=str
        ).encode()
        # Before the server starts: its handler appends here from the first request on.
        self.requests: list[str] = []
        try:
            self._server = ThreadingHTTPServer((host, port), self._handler())
        except OSError as error:
            raise SearchError(
                f"cannot serve the worker bootstrap on {host}:{port}: {error.strerror or error}"
            ) from error
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="nasflow-bootstrap", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        """The port actually bound (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> BootstrapServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                server.requests.append(self.path)
                if self.path == SPEC_PATH:
                    self._send(server.spec_document, "application/json")
                elif self.path == DATASET_PATH:
                    self._send_file(server.archive)
                else:
                    self.send_error(404)

            def _send(self, body: bytes, content_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _send_file(self, path: Path) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with path.open("rb") as handle:
                    shutil.copyfileobj(handle, self.wfile, _CHUNK)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
                logger.debug("bootstrap %s", format % args)

        return Handler


def _get(url: str, deadline: float) -> urllib.request.addinfourl:
    """GET ``url``, retrying refused connections until ``deadline`` (the chief may be starting)."""
    while True:
        try:
            return urllib.request.urlopen(url, timeout=30)  # noqa: S310 - the chief's own address
        except urllib.error.HTTPError as error:
            raise SearchError(f"worker bootstrap {url} answered HTTP {error.code}") from error
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() > deadline:
                reason = getattr(error, "reason", error)
                raise SearchError(f"cannot reach the search chief at {url}: {reason}") from error
            time.sleep(1.0)


def fetch_worker_spec(base_url: str, local_dir: str | Path, *, timeout_s: float = 300) -> WorkerSpec:
    """Download the spec and dataset a chief serves and return a spec pointing at the copies.

    Args:
        base_url: ``http://<chief pod IP>:<bootstrap port>``.
        local_dir: This worker's own folder (an emptyDir in a pod): the dataset goes to
            ``local_dir/dataset``, trial checkpoints to ``local_dir/work``.
        timeout_s: How long to keep retrying while the chief is unreachable.

    Raises:
        SearchError: The chief cannot be reached, or what it sent is not a whole dataset.
    """
    base_url = base_url.rstrip("/")
    local_dir = Path(local_dir)
    deadline = time.monotonic() + timeout_s
    with _get(base_url + SPEC_PATH, deadline) as response:
        try:
            document = json.loads(response.read())
            spec = WorkerSpec(**document["spec"])
            expected_sha = str(document["dataset_sha256"])
        except (ValueError, KeyError, TypeError) as error:
            raise SearchError(
                f"worker bootstrap {base_url}{SPEC_PATH} sent an unreadable spec: {error}"
            ) from error
    local_dir.mkdir(parents=True, exist_ok=True)
    archive = local_dir / "dataset.tar.gz"
    with _get(base_url + DATASET_PATH, deadline) as response, archive.open("wb") as handle:
        shutil.copyfileobj(response, handle, _CHUNK)
    actual_sha = _sha256(archive)
    if actual_sha != expected_sha:
        raise SearchError(
            f"dataset from {base_url} is corrupt: sha256 {actual_sha[:12]}… != {expected_sha[:12]}…"
        )
    dataset_root = local_dir / "unpacked"
    shutil.rmtree(dataset_root, ignore_errors=True)
    _unpack(archive, dataset_root)
    archive.unlink()
    spec.dataset_dir = str(dataset_root / "dataset")
    spec.work_dir = str(local_dir / "work")
    spec.overwrite = False
    logger.info("worker bootstrap: spec and dataset (sha256 %s) from %s", expected_sha[:12], base_url)
    return spec


def _unpack(archive: Path, destination: Path) -> None:
    """Unpack with tarfile's ``data`` filter, or the same checks by hand where it is missing.

    Extraction filters arrived in Python 3.11.4; Debian bookworm's Python (3.11.2, e.g. an image
    built on it) has none, and ``extractall(filter=...)`` raised a TypeError in every worker there.
    """
    with tarfile.open(archive, "r:gz") as packed:
        if hasattr(tarfile, "data_filter"):
            packed.extractall(destination, filter="data")
            return
        root = destination.resolve()
        for member in packed.getmembers():
            target = (root / member.name).resolve()
            if member.name.startswith("/") or not target.is_relative_to(root) or not (member.isfile() or member.isdir()):
                raise SearchError(f"dataset archive member {member.name!r} is not a plain file inside its folder")
        packed.extractall(destination)  # noqa: S202 - every member checked above
