"""nasflow.cluster.bootstrap: a worker pod gets the spec and dataset from the chief over HTTP."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import numpy as np
import pytest
from mlflow_server import free_port

from nasflow.cluster.bootstrap import BootstrapServer, fetch_worker_spec
from nasflow.cluster.spec import WorkerSpec
from nasflow.data import load_prepared
from nasflow.errors import SearchError


def _spec(dataset_dir: str, work_dir: Path) -> WorkerSpec:
    return WorkerSpec(
        dataset_dir=dataset_dir, space_config={"name": "cnn"}, space_source="cnn", settings={"max_trials": 3},
        objective={"mode": "accuracy"}, parent_run_id="abc", tracking_uri="http://mlflow:5000",
        work_dir=str(work_dir), overwrite=True,
    )  # fmt: skip


def test_worker_gets_an_identical_dataset_and_a_spec_pointing_at_its_own_copies(tmp_path, digits_dir):
    spec = _spec(digits_dir, tmp_path / "chief")
    with BootstrapServer(spec, host="127.0.0.1", port=0, pack_dir=tmp_path / "chief" / "bootstrap") as server:
        local = fetch_worker_spec(f"http://127.0.0.1:{server.port}", tmp_path / "pod" / "tmp", timeout_s=5)
        assert server.requests == ["/spec.json", "/dataset.tar.gz"]

    assert local.dataset_dir == str(tmp_path / "pod" / "tmp" / "unpacked" / "dataset")
    assert local.work_dir == str(tmp_path / "pod" / "tmp" / "work")
    assert local.overwrite is False, "only the chief may start the search afresh"
    unchanged = {k: v for k, v in asdict(local).items() if k not in ("dataset_dir", "work_dir", "overwrite")}
    assert unchanged == {k: v for k, v in asdict(spec).items() if k not in ("dataset_dir", "work_dir", "overwrite")}
    theirs, ours = load_prepared(digits_dir), load_prepared(local.dataset_dir)
    np.testing.assert_array_equal(theirs.x_train, ours.x_train)
    np.testing.assert_array_equal(theirs.y_test, ours.y_test)
    assert not (tmp_path / "pod" / "tmp" / "dataset.tar.gz").exists(), "the archive is removed once unpacked"


class _Impostor(BaseHTTPRequestHandler):
    """Serves a spec whose digest does not match, or an archive escaping its folder."""

    spec_body = b""
    archive_body = b""

    def do_GET(self) -> None:  # noqa: N802
        body = self.spec_body if self.path == "/spec.json" else self.archive_body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002
        return


def _impostor(spec_body: bytes, archive_body: bytes) -> ThreadingHTTPServer:
    handler = type("Handler", (_Impostor,), {"spec_body": spec_body, "archive_body": archive_body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


def _archive(member: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo(member)
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    return buffer.getvalue()


def test_a_corrupt_download_is_refused(tmp_path, digits_dir):
    spec = json.dumps({"spec": asdict(_spec(digits_dir, tmp_path)), "dataset_sha256": "0" * 64}).encode()
    server = _impostor(spec, _archive("dataset/splits.npz"))
    try:
        with pytest.raises(SearchError, match="is corrupt: sha256"):
            fetch_worker_spec(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "pod", timeout_s=5)
    finally:
        server.shutdown()


def test_an_archive_escaping_its_folder_is_refused(tmp_path, digits_dir):
    import hashlib

    evil = _archive("../../outside.txt")
    spec = json.dumps({"spec": asdict(_spec(digits_dir, tmp_path)), "dataset_sha256": hashlib.sha256(evil).hexdigest()})
    server = _impostor(spec.encode(), evil)
    try:
        with pytest.raises(tarfile.OutsideDestinationError):
            fetch_worker_spec(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "pod", timeout_s=5)
    finally:
        server.shutdown()
    assert not (tmp_path / "outside.txt").exists()


@pytest.fixture
def python_without_extraction_filters(monkeypatch):
    """tarfile as Python < 3.11.4 (Debian bookworm's 3.11.2) has it: no ``filter`` argument."""
    original = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
        if kwargs:
            raise TypeError(f"TarFile.extractall() got an unexpected keyword argument {next(iter(kwargs))!r}")
        return original(self, path, members, numeric_owner=numeric_owner, filter="fully_trusted")

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


def test_a_python_without_extraction_filters_unpacks_and_still_refuses_escapes(
    tmp_path, digits_dir, python_without_extraction_filters
):
    import hashlib

    spec = _spec(digits_dir, tmp_path / "chief")
    with BootstrapServer(spec, host="127.0.0.1", port=0, pack_dir=tmp_path / "chief" / "bootstrap") as server:
        local = fetch_worker_spec(f"http://127.0.0.1:{server.port}", tmp_path / "pod", timeout_s=5)
    np.testing.assert_array_equal(load_prepared(digits_dir).x_train, load_prepared(local.dataset_dir).x_train)

    evil = _archive("../../outside.txt")
    document = json.dumps({"spec": asdict(_spec(digits_dir, tmp_path)), "dataset_sha256": hashlib.sha256(evil).hexdigest()})
    impostor = _impostor(document.encode(), evil)
    try:
        with pytest.raises(SearchError, match="not a plain file inside its folder"):
            fetch_worker_spec(f"http://127.0.0.1:{impostor.server_address[1]}", tmp_path / "pod2", timeout_s=5)
    finally:
        impostor.shutdown()
    assert not (tmp_path / "outside.txt").exists()


def test_an_unreadable_spec_is_one_clear_error(tmp_path):
    server = _impostor(b"<html>not json</html>", b"")
    try:
        with pytest.raises(SearchError, match="sent an unreadable spec"):
            fetch_worker_spec(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "pod", timeout_s=5)
    finally:
        server.shutdown()


def test_a_missing_dataset_folder_is_refused_before_serving(tmp_path):
    with pytest.raises(SearchError, match="is not a folder"):
        BootstrapServer(_spec(str(tmp_path / "nope"), tmp_path), host="127.0.0.1", port=0, pack_dir=tmp_path / "b")


def test_worker_entry_point_exits_with_one_line_when_the_chief_is_unreachable(tmp_path):
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "nasflow.cluster.worker", "--spec-url", f"http://127.0.0.1:{port}",
         "--bootstrap-timeout", "2", "--role", "worker", "--supervise"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("nasflow:")]
    assert lines == [f"nasflow: cannot reach the search chief at http://127.0.0.1:{port}/spec.json: [Errno 111] Connection refused"]
