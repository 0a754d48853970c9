"""One HTTP port: ``/metrics`` for Prometheus, ``/healthz`` (liveness), ``/readyz`` (readiness) and
``/deletions/{table}/{key}`` (a deletion's receipt, ``reconciler/confirm.py``).

Liveness says the event loop and the consumers are making progress; readiness says this worker can do its
job now (streams found, AWS reachable, not shutting down). They are different questions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from reconciler.confirm import find_receipt, receipt_json
from reconciler.errors import ConfigError, DecodeError, ReconcilerError
from reconciler.ports import ReceiptStore

Probe = Callable[[], tuple[bool, str]]


class HttpServer:
    def __init__(  # noqa: PLR0917 - what it serves, in the order it always took them
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        live: Probe,
        ready: Probe,
        receipts: ReceiptStore | None = None,
    ) -> None:
        self._registry = registry
        self._receipts = receipts
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
        # Key JSON may hold '/', which arrives decoded: the key is the rest of the path.
        app.router.add_get("/deletions/{table}/{key:.+}", self._deletion)
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

    async def _deletion(self, request: web.Request) -> web.Response:
        """The receipt of a deleted item as JSON; 404 when there is none, 400 for a key that is neither a key
        hash nor key JSON, 503 when the receipts table cannot be read."""
        table = request.match_info["table"]
        if self._receipts is None:
            return web.json_response({"error": "receipts are not served here"}, status=404)
        try:
            receipt = await find_receipt(self._receipts, table, request.match_info["key"])
        except DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except ReconcilerError as exc:
            return web.json_response({"error": f"cannot read receipts: {type(exc).__name__}"}, status=503)
        if receipt is None:
            return web.json_response({"error": f"no receipt for that key of table {table!r}"}, status=404)
        return web.json_response(receipt_json(receipt))

    @staticmethod
    def _probe(check: Probe) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_: web.Request) -> web.StreamResponse:
            ok, detail = check()
            return web.Response(status=200 if ok else 503, text=detail + "\n")

        return handler
