"""The threaded `Watcher`: what the application hands it cannot stop it (an
exception its callbacks raise is logged, and it goes on), `close()` ends it
whenever it is called, and an `events()` loop that falls behind is let go
rather than queue without bound."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from policyhub.v1 import bundle_service_pb2 as pb
from policyhub.v1 import bundle_service_pb2_grpc as pb_grpc

import policyhub
from policyhub.sync import EVENTS_QUEUE_SIZE


class Snapshots(pb_grpc.BundleServiceServicer):
    """Serves no keys, and answers each watch, once `go` is set, with empty
    snapshots at revisions 1 to `revisions`, then holds the stream open."""

    def __init__(self, revisions: int) -> None:
        self.revisions = revisions
        self.go = threading.Event()

    def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: grpc.ServicerContext
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse()

    def WatchActive(
        self, request: pb.WatchActiveRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchActiveResponse]:
        context.send_initial_metadata(((policyhub.HEARTBEAT_INTERVAL_HEADER, "60000"),))
        self.go.wait(10)
        for revision in range(1, self.revisions + 1):
            yield pb.WatchActiveResponse(
                kind=pb.WATCH_EVENT_KIND_SNAPSHOT, revision=revision, complete=True
            )
        while context.is_active():
            time.sleep(0.05)


def serve(servicer: Snapshots) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_BundleServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"http://127.0.0.1:{port}"


def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "in time"
        time.sleep(0.01)


def test_an_exception_of_a_callback_is_logged_and_the_watcher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    servicer = Snapshots(2)
    servicer.go.set()
    server, address = serve(servicer)
    changes: list[int] = []

    def on_change(state: policyhub.State) -> None:
        changes.append(state.revision)
        raise RuntimeError("the application's bug")

    def on_event(event: policyhub.Event) -> None:
        raise RuntimeError("another one")

    try:
        with (
            caplog.at_level(logging.ERROR, logger="policyhub"),
            policyhub.Watcher(
                policyhub.Subscription(address, "payments"), on_change=on_change, on_event=on_event
            ) as watcher,
        ):
            # on_event raised on the first event (Connected), before any state.
            assert watcher.wait(10).revision >= 1
            until(lambda: (watcher.current() or policyhub.State("payments")).revision == 2)
            assert changes == [1, 2]
    finally:
        server.stop(None)
    logged = [record.getMessage() for record in caplog.records]
    assert "on_change raised; the watcher goes on" in logged
    assert "on_event raised; the watcher goes on" in logged


def test_close_before_the_thread_started_its_task_ends_the_watcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_event_loop = asyncio.set_event_loop

    def late(loop: asyncio.AbstractEventLoop | None) -> None:
        # The watcher's thread is slow to start.
        if threading.current_thread().name == "policyhub-watcher":
            time.sleep(0.3)
        set_event_loop(loop)

    monkeypatch.setattr(asyncio, "set_event_loop", late)
    watcher = policyhub.Watcher(policyhub.Subscription("http://127.0.0.1:1", "payments"))
    closing = threading.Thread(target=watcher.close, daemon=True)
    closing.start()
    closing.join(5)
    assert not closing.is_alive(), "close() returned"


def test_an_events_loop_that_falls_behind_is_let_go_and_holds_nothing_back() -> None:
    servicer = Snapshots(EVENTS_QUEUE_SIZE + 50)
    server, address = serve(servicer)
    try:
        watcher = policyhub.Watcher(policyhub.Subscription(address, "payments"))
        events = watcher.events()
        servicer.go.set()
        # The loop takes nothing meanwhile; the state in force goes on.
        until(
            lambda: (
                (watcher.current() or policyhub.State("payments")).revision
                == EVENTS_QUEUE_SIZE + 50
            )
        )
        watcher.close()
    finally:
        server.stop(None)
    taken: list[policyhub.Event] = []
    with pytest.raises(policyhub.Lagged):
        for event in events:
            taken.append(event)
    assert len(taken) == EVENTS_QUEUE_SIZE, "the events it had, then Lagged"
    assert isinstance(taken[0], policyhub.Connected)
    applied = [event.state.revision for event in taken if isinstance(event, policyhub.Applied)]
    assert applied == list(range(1, EVENTS_QUEUE_SIZE))
