"""The machinery behind `Subscription.events`: connect, resume, verify,
decide whole states, report, and say what happened as events.

    start -- cache? --> FromCache (verified again, validated)
      |
      v
    connect --> fetch JWKS --> WatchActive(since = decided revision) --> Connected
      ^                              | parts --> whole revision
      |                              |   verify every bundle, validate --> Applied / Rejected
      |                              |   report APPLIED / REJECTED
      +-- next address; full-jitter <+ any failure: UNAVAILABLE, reset, a bad
          backoff after a whole round    message, 3 missed heartbeats: Disconnected

It mirrors the Rust library's session module: it resumes from the last
revision it decided on (applied or rejected), applies a state only when it
is newer than the one applied (unless the server says `reset`), follows the
server's log's tree from each checkpoint (a declared restore taken on a
stream resumed from the old history's cursor opens the stream anew from
revision 0, so the restored server is taken whole), and moves between
several addresses by rendezvous rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

import grpc
import grpc.aio

from . import bundle as jose
from ._backoff import Backoff, second_half
from ._cache import Cache, CacheError
from ._client import PERMANENT_CODES, Client, Reporter, ReportFailed, Tls, announced_heartbeat
from ._endpoints import Endpoints
from ._telemetry import Telemetry
from .bundle import CheckpointClaims, Jwks, VerifyError
from .state import (
    Applied,
    CheckpointFresh,
    CheckpointStale,
    Connected,
    Disconnected,
    Event,
    FromCache,
    HistoryRefused,
    HistoryRestored,
    Refused,
    Rejected,
    Source,
    State,
    VerifiedBundle,
    WatchError,
)
from .tree import (
    Diverges,
    HistoryError,
    ProveFrom,
    Remembered,
    RestoreProof,
    Same,
    TreeHead,
    verify_note,
)
from .v1 import bundle_service_pb2 as pb
from .v1 import types_pb2

_log = logging.getLogger("policyhub")

T = TypeVar("T")

Validate = Callable[[State], str | Awaitable[str | None] | None]
"""The application's verdict on each new whole state, before it is put in
force: `None` accepts it, a string refuses it with that reason (reported
REJECTED; the previous state stays). It may be a coroutine function; an
exception it raises refuses the state with the exception's text."""

DEFAULT_HEARTBEAT_INTERVAL = 10.0


@dataclass
class Settings:
    """What one subscription follows and how (see `Subscription`)."""

    endpoints: list[str]
    namespace: str
    names: list[str]
    runtime_id: str | None
    labels: dict[str, str]
    cache_dir: str | None
    token: Callable[[], str | None] | None
    tls: Tls | None
    heartbeat_interval: float | None
    backoff_initial: float
    backoff_max: float
    rebalance_interval: float
    report_spread: float
    max_checkpoint_age: float | None
    retry_when_refused: bool
    log_origin: str | None
    witnesses: list[str]
    cosignatures: int


class Transient(Exception):
    """Retry after a backoff."""


class History(Exception):
    """The server's history does not extend the one verified: retry after a
    backoff, applying nothing meanwhile."""


class Permanent(Exception):
    """The server refused for good."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def from_rpc_error(error: grpc.aio.AioRpcError) -> Exception:
    code = error.code()
    if code in PERMANENT_CODES:
        return Permanent(code, error.details() or "")
    return Transient(f"{code.name}: {error.details()}")


@dataclass
class Revision:
    """A whole revision, assembled from its parts."""

    kind: int
    revision: int
    reset: bool
    bundles: list[types_pb2.Bundle] = field(default_factory=list)


class Assembler:
    """Gathers the parts of one revision (`complete = false` on all but the
    last), so that only a whole revision becomes a candidate state."""

    def __init__(self) -> None:
        self._pending: Revision | None = None

    def push(self, message: pb.WatchActiveResponse) -> Revision | None:
        pending = self._pending
        self._pending = None
        if pending is None:
            pending = Revision(message.kind, message.revision, message.reset)
        elif pending.kind != message.kind or pending.revision != message.revision:
            raise Transient(
                f"a part of revision {message.revision} interrupted revision {pending.revision}"
            )
        pending.bundles.extend(message.bundles)
        if message.complete:
            return pending
        self._pending = pending
        return None


class Freshness:
    """The server's newest checkpoint verified, and whether it grew stale."""

    def __init__(self, max_age: float | None) -> None:
        self.max_age = max_age
        self.newest: CheckpointClaims | None = None
        self.newest_jws = ""
        self.stale = False

    @staticmethod
    def age(signed_at: datetime) -> float:
        return max(0.0, (datetime.now(timezone.utc) - signed_at).total_seconds())

    def holds(self, jws: str) -> bool:
        return bool(jws) and jws == self.newest_jws

    def observe(self, claims: CheckpointClaims, jws: str) -> Event | None:
        if self.newest is not None and self.newest.signed_at >= claims.signed_at:
            return None
        self.newest, self.newest_jws = claims, jws
        fresh = self.max_age is None or self.age(claims.signed_at) < self.max_age
        if self.stale and fresh:
            self.stale = False
            return CheckpointFresh(claims.revision, claims.signed_at)
        return None

    def deadline(self) -> float | None:
        """When (event loop time) the newest checkpoint grows too old."""
        if self.max_age is None or self.newest is None or self.stale:
            return None
        left = max(0.0, self.max_age - self.age(self.newest.signed_at))
        return asyncio.get_running_loop().time() + left

    def expire(self) -> CheckpointStale:
        self.stale = True
        assert self.newest is not None
        return CheckpointStale(
            self.newest.revision, self.newest.signed_at, self.age(self.newest.signed_at)
        )

    def __str__(self) -> str:
        if self.newest is None:
            return "no checkpoint yet"
        if self.stale and self.max_age is not None:
            return (
                f"the server's newest checkpoint (revision {self.newest.revision}, signed "
                f"{self.newest.time}) is older than {int(self.max_age * 1000)} ms: its replica "
                "may be cut off from its database"
            )
        return f"checkpoint of revision {self.newest.revision} signed {self.newest.time}"


Emit = Callable[[Event], Awaitable[None]]


class SubscriptionState:
    """What the subscription holds between sessions, and its decisions."""

    def __init__(self, settings: Settings, validate: Validate, telemetry: Telemetry) -> None:
        self.settings = settings
        self.validate = validate
        self.telemetry = telemetry
        self.applied = State(namespace=settings.namespace)
        self.decided = 0
        self.jwks = Jwks()
        self.revoked: frozenset[str] = frozenset()
        """The ids of the revoked keys, fetched with the keys: whatever they
        sign is refused, a replayed message and a cached state included."""
        self.cache = (
            Cache(settings.cache_dir, settings.namespace, settings.names)
            if settings.cache_dir
            else None
        )
        self.pending_reports: dict[str, types_pb2.PolicyApplyStatus] = {}
        self.pending_revision = 0
        self.freshness = Freshness(settings.max_checkpoint_age)
        self.tree = Remembered(
            origin=settings.log_origin,
            witnesses=list(settings.witnesses),
            cosignatures=settings.cosignatures,
        )
        self.cached_tree: str | None = None

    async def judge(self, state: State) -> str | None:
        """The application's verdict; its exceptions refuse the state."""
        try:
            verdict = self.validate(state)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as error:  # the application's own failure refuses the state
            return f"the validation failed: {error!r}"
        return verdict if isinstance(verdict, str) else None

    async def start(self, emit: Emit) -> None:
        """Starts from the cache when there is a good one, and says so."""
        cache = self.cache
        if cache is None:
            return
        try:
            self.cached_tree = await asyncio.to_thread(cache.load_tree)
            self.tree.restored_through = await asyncio.to_thread(cache.load_restore)
        except (OSError, ValueError) as error:
            _log.warning("cannot read the cached tree of the server's log: %s", error)
        try:
            loaded = await asyncio.to_thread(cache.load)
        except CacheError as error:
            _log.error("refusing the cached state %s (%s); starting without one", cache.path, error)
            await emit(Rejected(0, f"the cached state does not verify: {error}"))
            return
        if loaded is None:
            return
        state, jwks, revoked = loaded
        reason = await self.judge(state)
        if reason is not None:
            await emit(Rejected(state.revision, f"the cached state was refused: {reason}"))
            return
        _log.info(
            "started from the cached state at revision %d until the server answers",
            state.revision,
        )
        self.decided, self.applied, self.jwks = state.revision, state, jwks
        self.revoked = revoked
        await emit(FromCache(state))

    async def refresh_keys(self, client: Client) -> None:
        """Fetches the keys again. A revocation learned that concerns the
        state in force is written to the cache at once, so that the cached
        state it signed is not served again."""
        self.jwks, revoked = await self.rpc(client.signing_keys())
        learned = revoked - self.revoked
        if learned:
            _log.warning("the server revoked signing keys %s", sorted(learned))
        concerns_state = any(held.key_id in learned for held in self.applied.bundles.values())
        self.revoked = revoked
        if concerns_state:
            await self.save(self.applied)

    def signed_by_revoked(self, bundles: Iterable[types_pb2.Bundle]) -> str | None:
        """The first of `bundles` signed by a revoked key, with the reason to
        refuse it. The session does not take the checkpoint of a message
        that carries one: an old message replayed carries an old checkpoint,
        which the revoked key may have signed too."""
        for bundle in bundles:
            try:
                kid = jose.key_id(bundle.jws)
            except VerifyError:
                continue
            if kid in self.revoked:
                return f"{bundle.name} version {bundle.version} is {revoked_key(kid)}"
        return None

    def re_signs_held(self, revision: Revision) -> bool:
        """Whether `revision` carries a version held in force signed by
        another key: the sign that the key which signed it may have been
        revoked, which the keys, fetched again, tell."""
        for bundle in revision.bundles:
            held = self.applied.bundles.get(bundle.name)
            if held is None or held.version != bundle.version or held.digest != bundle.digest:
                continue
            try:
                if jose.key_id(bundle.jws) != held.key_id:
                    return True
            except VerifyError:
                continue
        return False

    async def checkpoint(self, checkpoint: types_pb2.Checkpoint, client: Client) -> Event | None:
        """Verifies and takes a checkpoint of the stream; the event when it
        ends a stale spell. One that does not verify ends the connection."""
        if not checkpoint.jws or self.freshness.holds(checkpoint.jws):
            return None
        await self.refetch_unless_known(checkpoint.jws, client)
        try:
            claims = jose.verify_checkpoint(checkpoint.jws, self.jwks)
        except VerifyError as error:
            raise Transient(f"a checkpoint does not verify: {error}") from error
        return self.freshness.observe(claims, checkpoint.jws)

    async def refetch_unless_known(self, jws: str, client: Client) -> None:
        """Fetches the JWKS again when `jws` names a key it does not hold."""
        try:
            known = self.jwks.knows(jose.key_id(jws))
        except VerifyError:
            known = False
        if not known:
            with contextlib.suppress(Transient, Permanent):
                await self.refresh_keys(client)

    def verified_size(self) -> int:
        return self.tree.head.size if self.tree.head is not None else 0

    async def follow_tree(
        self, checkpoint: types_pb2.Checkpoint, client: Client
    ) -> HistoryRestored | None:
        """Follows the server's log's tree from a checkpoint's note: the
        first one is remembered; a newer tree only with a consistency proof;
        one that does not extend it only when the server proves a declared
        restore; anything else raises `History`."""
        if self.cached_tree is not None:
            note, self.cached_tree = self.cached_tree, None
            try:
                head = verify_note(note, self.tree.origin, self.jwks)
                self.tree.origin, self.tree.head = head.origin, head
            except VerifyError as error:
                _log.error("refusing the cached tree: %s", error)
        held = self.tree.head
        if not checkpoint.note or (held is not None and held.note == checkpoint.note):
            return None
        try:
            offered = verify_note(checkpoint.note, self.tree.origin, self.jwks)
        except VerifyError:
            # Perhaps a key rotated since the keys were fetched.
            await self.refresh_keys(client)
            try:
                offered = verify_note(checkpoint.note, self.tree.origin, self.jwks)
            except VerifyError as error:
                raise History(str(error)) from error
        try:
            judgement = self.tree.judge(offered)
        except HistoryError as error:
            raise History(str(error)) from error
        if isinstance(judgement, Same):
            return None
        if isinstance(judgement, Diverges):
            return await self.take_restore(offered, judgement.reason, client)
        assert isinstance(judgement, ProveFrom)
        proof: list[bytes] = []
        if self.tree.head is not None:
            proof = await self.rpc(client.consistency_proof(judgement.size, offered.size))
        try:
            self.tree.extend(offered, proof)
        except HistoryError as error:
            return await self.take_restore(offered, str(error), client)
        await self.remember_tree()
        return None

    async def rpc(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error
        except asyncio.TimeoutError as error:
            raise Transient("the server did not answer in time") from error

    async def take_restore(
        self, offered: TreeHead, diverges: str, client: Client
    ) -> HistoryRestored:
        from_size, to_size = self.verified_size(), offered.size
        try:
            answer = (await client.restore_proof(to_size)).proof
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNIMPLEMENTED):
                raise History(diverges) from error
            raise from_rpc_error(error) from error
        proof = RestoreProof(
            canonical=answer.canonical_event,
            leaf_index=answer.leaf_index,
            tree_size=answer.tree_size,
            hashes=list(answer.hashes),
        )
        try:
            reason = self.tree.restore(offered, proof)
        except HistoryError as error:
            raise History(f"{diverges}; {error}") from error
        await self.remember_tree()
        _log.warning(
            "took the server's restored history (%d to %d events), as its operator declared: %s",
            from_size,
            to_size,
            reason,
        )
        return HistoryRestored(reason, from_size, to_size)

    async def remember_tree(self) -> None:
        cache, head = self.cache, self.tree.head
        if cache is None or head is None:
            return
        try:
            await asyncio.to_thread(cache.save_tree, head.note)
            if self.tree.restored_through is not None:
                await asyncio.to_thread(cache.save_restore, self.tree.restored_through)
        except OSError as error:
            _log.warning("cannot cache the server's tree: %s", error)

    async def verify(self, bundle: types_pb2.Bundle, client: Client) -> VerifiedBundle:
        """Verifies one bundle of the stream; a key unknown to the JWKS makes
        it fetch the JWKS once more, a revoked one refuses it."""
        settings = self.settings
        kid = jose.key_id(bundle.jws)
        if not self.jwks.knows(kid) and kid not in self.revoked:
            with contextlib.suppress(Transient, Permanent):
                await self.refresh_keys(client)
        if kid in self.revoked:
            raise VerifyError(revoked_key(kid))
        if settings.names and bundle.name not in settings.names:
            raise VerifyError(f"{settings.namespace}/{bundle.name} was not asked for")
        claims = jose.verify_envelope(
            bundle.jws,
            namespace=settings.namespace,
            name=bundle.name,
            version=bundle.version,
            digest=bundle.digest,
            jwks=self.jwks,
        )
        return VerifiedBundle(
            name=bundle.name,
            version=claims.ver,
            label=claims.label,
            digest=claims.digest,
            revision=bundle.revision,
            key_id=bundle.key_id,
            body=claims.body,
            jws=bundle.jws,
        )

    async def decide(self, revision: Revision, client: Client) -> Event | None:
        """Applies or rejects one whole revision; what the application is
        told, if anything (heartbeats and stale states tell it nothing)."""
        if revision.kind == pb.WATCH_EVENT_KIND_SNAPSHOT:
            is_snapshot = True
        elif revision.kind == pb.WATCH_EVENT_KIND_UPDATE:
            is_snapshot = False
        else:
            self.decided = max(self.decided, revision.revision)
            return None
        if revision.revision < self.applied.revision and not revision.reset:
            revoked_signer = self.signed_by_revoked(revision.bundles)
            if revoked_signer is not None:
                # Harmless as an old message, but someone sends what a
                # revoked key signed: said, though nothing changes.
                _log.warning("refused an old revision %d: %s", revision.revision, revoked_signer)
                return Rejected(revision.revision, revoked_signer)
            _log.warning(
                "ignoring revision %d, older than the one applied (%d)",
                revision.revision,
                self.applied.revision,
            )
            return None
        if not is_snapshot and not revision.bundles:
            self.decided = max(self.decided, revision.revision)
            return None
        if self.re_signs_held(revision):
            try:
                await self.refresh_keys(client)
            except (Transient, Permanent) as error:
                _log.warning("cannot fetch the signing keys again: %s", error)
        with self.telemetry.deciding(revision.revision):
            verified: list[VerifiedBundle] = []
            failures: list[tuple[types_pb2.Bundle, str]] = []
            for bundle in revision.bundles:
                try:
                    verified.append(await self.verify(bundle, client))
                except VerifyError as error:
                    failures.append((bundle, str(error)))
            reason: str | None
            if failures:
                bad, why = failures[0]
                reason = (
                    f"{self.settings.namespace}/{bad.name} version {bad.version} "
                    f"does not verify: {why}"
                )
            else:
                bundles = {} if is_snapshot else dict(self.applied.bundles)
                bundles.update((good.name, good) for good in verified)
                candidate = State(
                    namespace=self.settings.namespace,
                    revision=revision.revision,
                    bundles=bundles,
                    source=Source.SERVER,
                    verified_at=time.time(),
                )
                reason = await self.judge(candidate)
                if reason is None:
                    self.report(revision, types_pb2.APPLY_STATE_APPLIED, {}, "")
                    await self.save(candidate)
                    self.applied = candidate
            self.decided = (
                revision.revision if revision.reset else max(self.decided, revision.revision)
            )
            if reason is None:
                self.telemetry.decided("applied", revision.revision)
                return Applied(self.applied)
            _log.warning(
                "rejected revision %d; the previous one stays in force: %s",
                revision.revision,
                reason,
            )
            own = {bundle.name: f"does not verify: {why}" for bundle, why in failures}
            self.report(revision, types_pb2.APPLY_STATE_REJECTED, own, reason)
            self.telemetry.decided("rejected", revision.revision)
            return Rejected(revision.revision, reason)

    async def save(self, state: State) -> None:
        if self.cache is None:
            return
        try:
            await asyncio.to_thread(self.cache.save, state, self.jwks, self.revoked)
        except OSError as error:
            _log.warning("cannot write the cache %s: %s", self.cache.path, error)

    def report(self, revision: Revision, state: int, own: dict[str, str], reason: str) -> None:
        for bundle in revision.bundles:
            self.pending_reports[bundle.name] = types_pb2.PolicyApplyStatus(
                name=bundle.name,
                version=bundle.version,
                state=state,  # type: ignore[arg-type]
                error=own.get(bundle.name, reason)[:1000],
                revision=revision.revision,
            )
        self.pending_revision = max(self.pending_revision, revision.revision)

    async def flush_reports(self, reporter: Reporter) -> None:
        """Sends the queued outcomes; keeps them for the next try on failure."""
        if self.settings.runtime_id is None:
            self.pending_reports.clear()
            return
        if not self.pending_reports:
            return
        request = pb.ReportStatusRequest(
            namespace=self.settings.namespace,
            runtime_id=self.settings.runtime_id,
            revision=self.pending_revision,
            policies=list(self.pending_reports.values()),
        )
        try:
            await reporter.send(request)
        except (grpc.aio.AioRpcError, ReportFailed, asyncio.TimeoutError) as error:
            _log.warning("cannot report the applied state; retrying later: %s", error)
            return
        self.pending_reports.clear()


def revoked_key(kid: str) -> str:
    """Why a bundle signed by `kid`, a revoked key, is refused."""
    return f"signed by revoked key {json.dumps(kid)}"


@dataclass
class Opened:
    """A stream open on one address, and what goes with it."""

    client: Client
    reporter: Reporter
    call: grpc.aio.UnaryStreamCall[pb.WatchActiveRequest, pb.WatchActiveResponse]
    deadline: float
    """Three heartbeat intervals: a stream silent for longer is dead."""

    async def close(self) -> None:
        self.reporter.close()
        self.call.cancel()
        await self.client.close()


class Driver:
    """Follows one subscription, sending every event to `emit`."""

    def __init__(self, settings: Settings, validate: Validate, emit: Emit) -> None:
        self.settings = settings
        self.emit = emit
        self.telemetry = Telemetry(settings.namespace)
        self.state = SubscriptionState(settings, validate, self.telemetry)
        self.endpoints = Endpoints(settings.endpoints, settings.runtime_id)

    def interval(self) -> float:
        return self.settings.heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL

    def client(self, address: str) -> Client:
        interval = self.interval()
        return Client(
            address,
            tls=self.settings.tls,
            token=self.settings.token,
            keepalive_ms=max(int(interval * 1000), 100),
            call_timeout=max(3 * interval, 5.0),
        )

    async def open(self, address: str) -> Opened:
        """Connects, fetches the keys if none are held, sends the reports
        pending and opens the watch from the decided revision."""
        client = self.client(address)
        try:
            reporter = Reporter(client)
            state = self.state
            if not state.jwks.keys:
                await state.refresh_keys(client)
            await state.flush_reports(reporter)
            runtime = (
                pb.RuntimeIdentity(id=self.settings.runtime_id, labels=self.settings.labels)
                if self.settings.runtime_id is not None
                else None
            )
            call = client.watch(
                pb.WatchActiveRequest(
                    namespace=self.settings.namespace,
                    names=self.settings.names,
                    since_revision=state.decided,
                    runtime=runtime,
                )
            )
            metadata = await state.rpc(
                asyncio.wait_for(call.initial_metadata(), client.call_timeout)
            )
            interval = (
                self.settings.heartbeat_interval
                or announced_heartbeat(metadata)
                or DEFAULT_HEARTBEAT_INTERVAL
            )
            return Opened(client, reporter, call, 3 * interval)
        except BaseException:
            await client.close()
            raise

    async def run(self) -> None:
        """Follows until a permanent failure (raised as `WatchError`)."""
        settings = self.settings
        if not settings.endpoints:
            raise WatchError("the subscription names no endpoint")
        await self.state.start(self.emit)
        backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        while True:
            started = time.monotonic()
            refused = history = False
            try:
                await self.session()
            except Permanent as failure:
                if not (
                    settings.retry_when_refused
                    and failure.code
                    in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
                ):
                    raise WatchError(f"the server refused the watch: {failure}") from failure
                reason, refused = str(failure), True
            except History as failure:
                reason, history = str(failure), True
            except Transient as failure:
                reason = str(failure)
            if time.monotonic() - started > settings.backoff_max:
                backoff = Backoff(settings.backoff_initial, settings.backoff_max)
                self.endpoints.settled()
            failed_from = self.endpoints.current
            if self.endpoints.failed():
                retry_in = backoff.next_delay()
            else:
                retry_in = settings.backoff_initial * random.random()
            refused_token = settings.token() if refused and settings.token else None
            event: Event
            if history:
                _log.error("refusing the server's history; the state in force stays: %s", reason)
                event = HistoryRefused(reason, self.state.verified_size(), retry_in)
                self.telemetry.reconnecting("history")
            elif refused:
                _log.warning("the server refused the credentials; retrying: %s", reason)
                event = Refused(reason, retry_in)
                self.telemetry.reconnecting("refused")
            else:
                _log.warning(
                    "watch on %s interrupted (%s); resuming from revision %d on %s in %.3f s",
                    failed_from,
                    reason,
                    self.state.decided,
                    self.endpoints.current,
                    retry_in,
                )
                event = Disconnected(reason, retry_in, self.state.decided)
                self.telemetry.reconnecting("disconnected")
            await self.emit(event)
            await self.wait(retry_in, refused_token if refused else None)

    async def wait(self, delay: float, refused_token: str | None) -> None:
        """Waits out the backoff, noticing a stale checkpoint meanwhile and,
        after a refusal, a new token (read twice a second)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + delay
        while (now := loop.time()) < until:
            step = until - now
            stale_at = self.state.freshness.deadline()
            if stale_at is not None:
                step = min(step, max(0.0, stale_at - now))
            if refused_token is not None:
                step = min(step, 0.5)
            await asyncio.sleep(step)
            if stale_at is not None and loop.time() >= stale_at:
                await self.emit(self.state.freshness.expire())
            if (
                refused_token is not None
                and self.settings.token is not None
                and self.settings.token() != refused_token
            ):
                return

    async def session(self) -> None:
        """One connection's life; it ends only by raising."""
        state, endpoints, settings = self.state, self.endpoints, self.settings
        loop = asyncio.get_running_loop()
        opened = await self.open(endpoints.current)
        read: asyncio.Task[object] | None = None
        try:
            await self.emit(Connected(state.decided, endpoints.current))
            rebalance_at = self.next_rebalance()
            assembler = Assembler()
            report_at: float | None = None
            last_message = loop.time()
            read = asyncio.ensure_future(opened.call.read())
            while True:
                now = loop.time()
                message_deadline = last_message + opened.deadline
                stale_at = state.freshness.deadline()
                wake = min(
                    at
                    for at in (message_deadline, report_at, stale_at, rebalance_at)
                    if at is not None
                )
                done, _ = await asyncio.wait({read}, timeout=max(0.0, wake - now))
                now = loop.time()
                if not done:
                    if report_at is not None and now >= report_at:
                        report_at = None
                        await self.flush_reports(opened)
                    if stale_at is not None and now >= stale_at:
                        stale = state.freshness.expire()
                        reason = str(state.freshness)
                        await self.emit(stale)
                        raise Transient(reason)
                    if rebalance_at is not None and now >= rebalance_at:
                        moved = await self.rebalance(opened)
                        if moved is None:
                            rebalance_at = self.next_rebalance()
                        else:
                            read.cancel()
                            opened, rebalance_at, assembler = moved, None, Assembler()
                            last_message = loop.time()
                            read = asyncio.ensure_future(opened.call.read())
                            await self.emit(Connected(state.decided, endpoints.current))
                        continue
                    if now >= message_deadline:
                        raise Transient(
                            f"no message for {int(opened.deadline * 1000)} ms, three heartbeats"
                        )
                    continue
                try:
                    message = read.result()
                except grpc.aio.AioRpcError as error:
                    raise from_rpc_error(error) from error
                if message is grpc.aio.EOF:
                    raise Transient("the stream ended")
                if not isinstance(message, pb.WatchActiveResponse):
                    raise Transient("the stream carried something other than a watch message")
                last_message = loop.time()
                read = asyncio.ensure_future(opened.call.read())
                revoked_signer = state.signed_by_revoked(message.bundles) is not None
                if message.HasField("checkpoint") and not revoked_signer:
                    restored = await state.follow_tree(message.checkpoint, opened.client)
                    if restored is not None:
                        await self.emit(restored)
                        if message.kind != pb.WATCH_EVENT_KIND_SNAPSHOT:
                            # The stream resumed from a cursor of the history
                            # left behind, so what the restored server took up
                            # to that revision would never come: the restored
                            # server is taken whole, from a snapshot on a
                            # stream opened anew.
                            state.decided = 0
                            reopened = await self.open(endpoints.current)
                            read.cancel()
                            await opened.close()
                            opened, assembler = reopened, Assembler()
                            last_message = loop.time()
                            read = asyncio.ensure_future(opened.call.read())
                            continue
                    fresh = await state.checkpoint(message.checkpoint, opened.client)
                    if fresh is not None:
                        await self.emit(fresh)
                whole = assembler.push(message)
                if whole is None:
                    continue
                event = await state.decide(whole, opened.client)
                if event is not None:
                    await self.emit(event)
                if settings.report_spread <= 0:
                    await self.flush_reports(opened)
                elif report_at is None and state.pending_reports:
                    report_at = loop.time() + second_half(settings.report_spread)
        finally:
            if read is not None:
                read.cancel()
            await opened.close()

    async def flush_reports(self, opened: Opened) -> None:
        """Sends the queued outcomes on the stream's connection, waiting for
        the answer no longer than three heartbeats: a link that does not
        answer a report in that time is as dead as a silent stream (a
        half-open link does neither), and the outcomes stay queued for the
        next connection."""
        try:
            await asyncio.wait_for(self.state.flush_reports(opened.reporter), opened.deadline)
        except asyncio.TimeoutError:
            raise Transient(
                f"no answer to a report for {int(opened.deadline * 1000)} ms, three heartbeats"
            ) from None

    def next_rebalance(self) -> float | None:
        if self.endpoints.on_preferred():
            return None
        return asyncio.get_running_loop().time() + second_half(self.settings.rebalance_interval)

    async def rebalance(self, opened: Opened) -> Opened | None:
        """Opens a stream on the first choice; once it is open, the one in
        use is closed. `None` when the first choice does not answer yet."""
        preferred = self.endpoints.preferred
        try:
            moved = await asyncio.wait_for(self.open(preferred), opened.deadline)
        except (Transient, History, Permanent, asyncio.TimeoutError) as failure:
            _log.debug("the preferred server %s does not answer yet: %s", preferred, failure)
            return None
        _log.info("moved back to the preferred server %s", preferred)
        self.endpoints.moved_to_preferred()
        await opened.close()
        return moved
