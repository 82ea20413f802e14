"""The synchronous face, for services that are not async: a `Watcher` runs
the subscription on an event loop of its own in a background thread and
keeps the state in force for any thread to read.

As LaunchDarkly's SDKs treat their listeners, what the application hands
the watcher cannot stop it: an exception raised by `on_change` or
`on_event` is logged and the watcher goes on, and each `events()` loop has
a bounded queue, so that a loop that falls behind is let go (`Lagged`)
rather than hold the watcher back or grow without bound."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

from .errors import Lagged, WatchError
from .state import Applied, Event, FromCache, State
from .subscription import Subscription, Validate, _accept

__all__ = ["EVENTS_QUEUE_SIZE", "Watcher"]

EVENTS_QUEUE_SIZE = 100
"""How many events an `events()` loop may fall behind before it is let go."""

_log = logging.getLogger("policyhub")

T = TypeVar("T")


class _Listener:
    """One `events()` loop: the events it has yet to take, and whether it
    fell too far behind."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.lagged = False


class Watcher:
    """Follows `subscription` in a background thread.

    `validate` (run on the watcher's thread) accepts a state with `None` or
    refuses it with a reason; `on_change` is called (on the watcher's
    thread) with every state put in force; `on_event` with every event;
    an exception either raises is logged, and the watcher goes on.
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
        # Guards the state in force, the end, and the listeners.
        self._condition = threading.Condition()
        self._current: State | None = None
        self._error: Exception | None = None
        self._ended = False
        self._listeners: list[_Listener] = []
        self._loop = asyncio.new_event_loop()
        # Guards the task, whether it is closing, and the loop's closing:
        # `close()` may come before the thread made the task, or as the
        # loop closes.
        self._lock = threading.Lock()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name="policyhub-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        with self._lock:
            task = None if self._closing else self._loop.create_task(self._follow())
            self._task = task
        try:
            if task is not None:
                self._loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            with self._lock:
                self._loop.close()
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    async def _follow(self) -> None:
        try:
            async for event in self._subscription.events(self._validate):
                if isinstance(event, Applied | FromCache):
                    with self._condition:
                        self._current = event.state
                        self._condition.notify_all()
                    _call("on_change", self._on_change, event.state)
                _call("on_event", self._on_event, event)
                self._publish(event)
        except WatchError as error:
            with self._condition:
                self._error = error
        except Exception as error:  # a defect: wait() says it, rather than "no state yet"
            _log.exception("the watcher stopped on an unexpected error")
            with self._condition:
                self._error = error

    def _publish(self, event: Event) -> None:
        """Hands `event` to every `events()` loop; one whose queue is full
        is let go."""
        with self._condition:
            for listener in list(self._listeners):
                if len(listener.events) >= EVENTS_QUEUE_SIZE:
                    _log.warning(
                        "an events() loop fell %d events behind; it is let go", EVENTS_QUEUE_SIZE
                    )
                    listener.lagged = True
                    self._listeners.remove(listener)
                else:
                    listener.events.append(event)
            self._condition.notify_all()

    def current(self) -> State | None:
        """The state in force; `None` before the first one."""
        with self._condition:
            return self._current

    def wait(self, timeout: float | None = None) -> State:
        """The state in force, waiting up to `timeout` seconds for a first
        one; `TimeoutError` when none came, `WatchError` when the
        subscription ended for good (or what else ended it)."""
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
        """The events from now on, until the watcher is closed. A loop that
        falls more than `EVENTS_QUEUE_SIZE` events behind is let go: after
        the events it had, it raises `Lagged`, and `events()` may be called
        again."""
        listener = _Listener()
        with self._condition:
            if not self._ended:
                self._listeners.append(listener)
        return self._take(listener)

    def _take(self, listener: _Listener) -> Iterator[Event]:
        try:
            while True:
                with self._condition:
                    self._condition.wait_for(
                        lambda: bool(listener.events) or listener.lagged or self._ended
                    )
                    if listener.events:
                        event = listener.events.popleft()
                    elif listener.lagged:
                        raise Lagged(
                            f"this events() loop fell {EVENTS_QUEUE_SIZE} events behind and "
                            "was let go; call events() again to follow on"
                        )
                    else:
                        return
                yield event
        finally:
            with self._condition:
                if listener in self._listeners:
                    self._listeners.remove(listener)

    def close(self) -> None:
        """Stops following and waits for the thread to end (unless called
        from it, by a callback)."""
        with self._lock:
            self._closing = True
            task = self._task
            if task is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(task.cancel)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _call(name: str, callback: Callable[[T], object] | None, argument: T) -> None:
    """Calls the application's `callback`; what it raises is logged, and the
    watcher goes on."""
    if callback is None:
        return
    try:
        callback(argument)
    except Exception:
        _log.exception("%s raised; the watcher goes on", name)
