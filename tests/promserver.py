"""Debian's real ``prometheus`` and ``promtool`` for tests: found on PATH, run on loopback, never skipped."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import yaml

INSTALL_HINT = "install Debian's prometheus package (apt-get install -y prometheus); .ci/run does"


def tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; a missing tool fails the test rather than skip it."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found: {INSTALL_HINT}"
        raise AssertionError(msg)
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed tool with our own arguments
        [tool("promtool"), *args], input=stdin, capture_output=True, text=True, check=False, timeout=120
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ready(url: str, process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response,  # noqa: S310 - loopback
        ):
            return bool(response.status == HTTPStatus.OK)
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def prometheus(directory: Path, config: dict[str, Any], rules: dict[str, Any]) -> Iterator[str]:
    """Run ``prometheus`` on 127.0.0.1 with ``config`` and one rules file; yield its base URL.

    The port comes from the kernel; if another process takes it between our probe and Prometheus's bind,
    Prometheus exits and we try again with a new one.
    """
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
    (directory / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": ["rules.yaml"]}))
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = (directory / "prometheus.log").open("wb")
        process = subprocess.Popen(  # noqa: S603 - a fixed tool with our own arguments
            [
                tool("prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            if _ready(url, process, seconds=30):
                yield url
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    msg = f"prometheus did not start; its log: {(directory / 'prometheus.log').read_text()[-2000:]}"
    raise AssertionError(msg)
