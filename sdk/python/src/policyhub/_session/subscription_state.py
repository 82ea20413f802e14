"""What the subscription holds between sessions, and its decisions: the
state in force, where to resume, the keys and the keys revoked, the cache,
the outcomes not yet reported and the server's history as verified (which
`history` follows). It starts from the cache, verifies each bundle of a
whole revision and applies or rejects the revision whole."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Iterable

from .. import bundle as jose
from .._cache import Cache, CacheError
from .._client import Client
from .._telemetry import Telemetry
from ..bundle import Jwks
from ..errors import VerifyError
from ..state import Applied, Event, FromCache, Rejected, Source, State, VerifiedBundle
from ..tree import Remembered
from ..v1 import bundle_service_pb2 as pb
from ..v1 import types_pb2
from .failure import Permanent, Transient, rpc
from .freshness import Freshness
from .reports import Reports
from .revision import Revision
from .settings import Emit, Settings, Validate

_log = logging.getLogger("policyhub")


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
        self.reports = Reports(settings)
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
        self.jwks, revoked = await rpc(client.signing_keys())
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

    def is_stale(self, revision: Revision) -> bool:
        """Whether `revision` brings nothing newer than the state in force:
        an older revision, or the server's own revision in force again (a
        message replayed). A reset (a server behind the cursor) is new, and
        so is the server's state at the revision of one read from the
        cache."""
        again = (
            revision.revision == self.applied.revision
            and self.applied.revision > 0
            and self.applied.source == Source.SERVER
        )
        return (revision.revision < self.applied.revision or again) and not revision.reset

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
        if self.is_stale(revision):
            revoked_signer = self.signed_by_revoked(revision.bundles)
            if revoked_signer is not None:
                # Harmless as an old message, but someone sends what a
                # revoked key signed: said, though nothing changes.
                _log.warning("refused an old revision %d: %s", revision.revision, revoked_signer)
                return Rejected(revision.revision, revoked_signer)
            _log.warning(
                "ignoring revision %d, not newer than the one applied (%d)",
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
                    self.reports.add(revision, types_pb2.APPLY_STATE_APPLIED, {}, "")
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
            self.reports.add(revision, types_pb2.APPLY_STATE_REJECTED, own, reason)
            self.telemetry.decided("rejected", revision.revision)
            return Rejected(revision.revision, reason)

    async def save(self, state: State) -> None:
        if self.cache is None:
            return
        try:
            await asyncio.to_thread(self.cache.save, state, self.jwks, self.revoked)
        except OSError as error:
            _log.warning("cannot write the cache %s: %s", self.cache.path, error)


def revoked_key(kid: str) -> str:
    """Why a bundle signed by `kid`, a revoked key, is refused."""
    return f"signed by revoked key {json.dumps(kid)}"
