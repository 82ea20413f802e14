"""The synchronous face, for services that are not async: a `Watcher` runs
the subscription on an event loop of its own in a background thread and
keeps the state in force for any thread to read."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator

from .state import Applied, Event, FromCache, State, WatchError
from .subscription import Subscription, Validate, _accept

__all__ = ["Watcher"]


class Watcher:
    """Follows `subscription` in a background thread.

    `validate` (run on the watcher's thread) accepts a state with `None` or
    refuses it with a reason; `on_change` is called (on the watcher's
    thread) with every state put in force; `on_event` with every event.
    `current()` is the state in force; `wait()` waits for one; `events()`
    iterates over what happens, from any thread. Use it as a context
    manager, or call `close()`.
    """

    def __init__(
        self,
        subscription: Subscription,
        *,
        validate: Validate = _accept,
        on_change: Callable[[State], object] | None = None,
        on_event: Callable[[Event], object] | None = None,
    ) -> None:
        self._subscription = subscription
        self._validate = validate
        self._on_change = on_change
        self._on_event = on_event
        self._condition = threading.Condition()
        self._current: State | None = None
        self._error: WatchError | None = None
        self._ended = False
        self._listeners: list[queue.Queue[Event | None]] = []
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="policyhub-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._follow())
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()
            with self._condition:
                self._ended = True
                for listener in self._listeners:
                    listener.put(None)
                self._condition.notify_all()

    async def _follow(self) -> None:
        try:
            async for event in self._subscription.events(self._validate):
                if isinstance(event, Applied | FromCache):
                    with self._condition:
                        self._current = event.state
                        self._condition.notify_all()
                    if self._on_change is not None:
                        self._on_change(event.state)
                if self._on_event is not None:
                    self._on_event(event)
                with self._condition:
                    for listener in self._listeners:
                        listener.put(event)
        except WatchError as error:
            with self._condition:
                self._error = error

    def current(self) -> State | None:
        """The state in force; `None` before the first one."""
        with self._condition:
            return self._current

    def wait(self, timeout: float | None = None) -> State:
        """The state in force, waiting up to `timeout` seconds for a first
        one; `TimeoutError` when none came, `WatchError` when the
        subscription ended for good."""
        with self._condition:
            self._condition.wait_for(
                lambda: self._current is not None or self._ended, timeout=timeout
            )
            if self._current is not None:
                return self._current
            if self._error is not None:
                raise self._error
            raise TimeoutError("no state yet")

    def events(self) -> Iterator[Event]:
        """The events from now on, until the watcher is closed."""
        listener: queue.Queue[Event | None] = queue.Queue()
        with self._condition:
            if self._ended:
                return
            self._listeners.append(listener)
        try:
            while (event := listener.get()) is not None:
                yield event
        finally:
            with self._condition:
                self._listeners.remove(listener)

    def close(self) -> None:
        """Stops following and waits for the thread to end."""
        task = self._task
        if task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
