"""One HTTP port: ``/metrics`` for Prometheus, ``/healthz`` (liveness) and ``/readyz`` (readiness).

Liveness says the event loop and the consumers are making progress; readiness says this worker can do its
job now (streams found, AWS reachable, not shutting down). They are different questions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.errors import ConfigError

Probe = Callable[[], tuple[bool, str]]


class HttpServer:
    def __init__(self, registry: CollectorRegistry, host: str, port: int, live: Probe, ready: Probe) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._live = live
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> Self:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._probe(self._live))
        app.router.add_get("/readyz", self._probe(self._ready))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:  # a busy port, an address not on this host, a name that does not resolve
            await self.close()
            raise ConfigError(
                f"cannot serve HTTP on {self._host}:{self._port}: {exc.strerror or exc}"
                " (set --http-host/--http-port or RECONCILER_HTTP_HOST/_PORT)"
            ) from exc
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    @staticmethod
    def _probe(check: Probe) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_: web.Request) -> web.StreamResponse:
            ok, detail = check()
            return web.Response(status=200 if ok else 503, text=detail + "\n")

        return handler
