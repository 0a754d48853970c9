"""Debian's real ``prometheus`` and ``promtool`` for tests: found on PATH, run on loopback, never skipped."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp
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


async def _ready(url: str, process: asyncio.subprocess.Process, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while asyncio.get_running_loop().time() < deadline and process.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/-/ready") as response:
                    if response.status == HTTPStatus.OK:
                        return True
            await asyncio.sleep(0.2)
    return False


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
    try:
        async with asyncio.timeout(10):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def prometheus(directory: Path, config: dict[str, Any], rules: dict[str, Any]) -> AsyncIterator[str]:
    """Run ``prometheus`` on 127.0.0.1 with ``config`` and one rules file; yield its base URL.

    Asynchronous throughout, so a worker on the same event loop keeps answering scrapes. The port comes
    from the kernel; if another process takes it between our probe and Prometheus's bind, Prometheus exits
    and we try again with a new one.
    """
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
    (directory / "prometheus.yml").write_text(yaml.safe_dump({**config, "rule_files": ["rules.yaml"]}))
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with (directory / "prometheus.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                tool("prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                if await _ready(url, process, seconds=30):
                    yield url
                    return
            finally:
                await _stop(process)
    raise AssertionError(f"prometheus did not start; its log: {log_tail(directory)}")


def log_tail(directory: Path) -> str:
    """The end of the test Prometheus's log, for a failure message."""
    return (directory / "prometheus.log").read_text()[-3000:]
