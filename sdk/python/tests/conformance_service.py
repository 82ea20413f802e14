"""The Python runtime SDK behind the conformance kit's test-service protocol.

Four requests (the book's "Conformance for SDK authors"): `GET /` names the
implementation and its capabilities, `POST /runtimes` starts one runtime
(one `policyhub.Subscription`) from the kit's settings, `GET
/runtimes/{id}` says what it did, `DELETE /runtimes/{id}` stops it (its
cache stays). The HTTP side is the standard library's threaded server; the
runtimes all run on one asyncio event loop in another thread.

    python conformance_service.py --listen 127.0.0.1:0

prints its address (`http://host:port`) once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import pathlib
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import policyhub

CAPABILITIES = ["cache", "reports", "history", "witnesses", "endpoints", "revocation", "fleet"]


class Runtime:
    """One runtime: its subscription's task and what it did, as the kit reads it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_force: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        with self.lock:
            return {"inForce": self.in_force, "events": list(self.events)}

    def record(self, event: policyhub.Event) -> None:
        with self.lock:
            if isinstance(event, policyhub.Applied | policyhub.FromCache):
                state = event.state
                self.in_force = {
                    "revision": state.revision,
                    "source": state.source.value,
                    "policies": {
                        name: {"version": b.version, "digest": b.digest, "body": b.body}
                        for name, b in state.bundles.items()
                    },
                }
                self.events.append(
                    {
                        "type": "applied",
                        "revision": state.revision,
                        "source": state.source.value,
                        "policies": {name: b.version for name, b in state.bundles.items()},
                    }
                )
            elif isinstance(event, policyhub.Rejected):
                self.events.append(
                    {"type": "rejected", "revision": event.revision, "reason": event.reason}
                )
            elif isinstance(event, policyhub.Connected):
                self.events.append({"type": "connected", "endpoint": event.endpoint})
            elif isinstance(event, policyhub.Disconnected | policyhub.Refused):
                self.events.append({"type": "disconnected", "reason": event.reason})
            elif isinstance(event, policyhub.HistoryRefused):
                self.events.append({"type": "historyRefused", "reason": event.reason})
            elif isinstance(event, policyhub.HistoryRestored):
                self.events.append({"type": "historyRestored", "reason": event.reason})
            elif isinstance(event, policyhub.CheckpointStale):
                self.events.append({"type": "checkpointStale"})
            elif isinstance(event, policyhub.CheckpointFresh):
                self.events.append({"type": "checkpointFresh"})

    async def follow(self, subscription: policyhub.Subscription) -> None:
        try:
            async for event in subscription.events():
                self.record(event)
        except Exception as error:  # a permanent failure, or a defect the kit should see
            logging.exception("the runtime ended")
            with self.lock:
                self.events.append({"type": "disconnected", "reason": f"ended: {error!r}"})


def subscription(settings: dict[str, Any]) -> policyhub.Subscription:
    """The SDK's subscription for the kit's settings; `ValueError` when one
    cannot be honoured."""
    endpoints = settings.get("endpoints") or []
    if not endpoints:
        raise ValueError("at least one endpoint")
    backoff = settings.get("backoff")
    witnesses = settings.get("witnesses")
    heartbeat = settings.get("heartbeatIntervalMs")
    rebalance = settings.get("rebalanceIntervalMs")
    max_age = settings.get("maxCheckpointAgeMs")
    ca_file = settings.get("caFile")
    token_file = settings.get("tokenFile")
    ca = pathlib.Path(ca_file).read_bytes() if ca_file else None
    return policyhub.Subscription(
        endpoints,
        settings.get("namespace", ""),
        names=settings.get("names") or [],
        runtime_id=settings.get("runtimeId"),
        cache_dir=settings.get("cacheDir"),
        heartbeat_interval=heartbeat / 1000 if heartbeat is not None else None,
        backoff=(backoff["initialMs"] / 1000, backoff["maxMs"] / 1000) if backoff else (1.0, 30.0),
        rebalance_interval=(
            rebalance / 1000 if rebalance is not None else policyhub.DEFAULT_REBALANCE_INTERVAL
        ),
        max_checkpoint_age=max_age / 1000 if max_age is not None else 600.0,
        witnesses=witnesses["keys"] if witnesses else [],
        cosignatures=witnesses["required"] if witnesses else 0,
        tls=policyhub.Tls(ca_certificate=ca) if ca is not None else None,
        token=policyhub.token_file(token_file) if token_file else None,
    )


class Service:
    """The runtimes started, by id, on one event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.runtimes: dict[str, Runtime] = {}
        self.ids = itertools.count()
        self.lock = threading.Lock()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def start(self, settings: dict[str, Any]) -> str:
        runtime = Runtime()
        following = subscription(settings)

        async def begin() -> None:
            runtime.task = asyncio.create_task(runtime.follow(following))

        asyncio.run_coroutine_threadsafe(begin(), self.loop).result()
        with self.lock:
            id = str(next(self.ids))
            self.runtimes[id] = runtime
        return id

    def view(self, id: str) -> dict[str, Any] | None:
        with self.lock:
            runtime = self.runtimes.get(id)
        return runtime.view() if runtime is not None else None

    def stop(self, id: str) -> bool:
        with self.lock:
            runtime = self.runtimes.pop(id, None)
        if runtime is None:
            return False

        async def end() -> None:
            if runtime.task is not None:
                runtime.task.cancel()
                await asyncio.gather(runtime.task, return_exceptions=True)

        # The subscription lets its cache and connection go before the next
        # runtime over the same cache starts.
        asyncio.run_coroutine_threadsafe(end(), self.loop).result()
        return True


def handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def answer(
            self, status: HTTPStatus, body: Any = None, headers: dict[str, str] | None = None
        ) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def runtime_id(self) -> str | None:
            parts = self.path.strip("/").split("/")
            return parts[1] if len(parts) == 2 and parts[0] == "runtimes" else None

        def do_GET(self) -> None:
            if self.path == "/":
                name = "policyhub (Python)"
                self.answer(HTTPStatus.OK, {"name": name, "capabilities": CAPABILITIES})
                return
            id = self.runtime_id()
            view = service.view(id) if id is not None else None
            if view is None:
                self.answer(HTTPStatus.NOT_FOUND)
            else:
                self.answer(HTTPStatus.OK, view)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path != "/runtimes":
                self.answer(HTTPStatus.NOT_FOUND)
                return
            try:
                id = service.start(json.loads(body))
            except (ValueError, KeyError, TypeError) as error:
                self.answer(HTTPStatus.BAD_REQUEST, {"message": str(error)})
                return
            self.answer(HTTPStatus.CREATED, {"id": id}, {"Location": f"/runtimes/{id}"})

        def do_DELETE(self) -> None:
            id = self.runtime_id()
            if id is not None and service.stop(id):
                self.answer(HTTPStatus.NO_CONTENT)
            else:
                self.answer(HTTPStatus.NOT_FOUND)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--listen", default="127.0.0.1:8111", help="host:port; port 0 takes a free one"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler(Service()))
    server.daemon_threads = True
    print(f"http://{host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
