"""policyhub: follow policyhub safely from Python.

A `Subscription` hands the application verified, whole states of a
namespace ("the complete active set at revision R"), never half of an
atomic release. It resumes after any failure from the last revision it
decided on, verifies every bundle (an Ed25519 JWS) against the server's
JWKS, keeps a last-known-good cache on disk, never goes backwards, checks
the server's signed checkpoints, its log's consistency and witness
cosignatures, and reports what the application applied or rejected.

    import asyncio
    import policyhub

    async def main() -> None:
        subscription = policyhub.Subscription(
            "http://127.0.0.1:50051",
            "payments",
            runtime_id="enforcer-1",
            token=policyhub.token_file("runtime.token"),
            cache_dir="cache",
        )

        def validate(state: policyhub.State) -> str | None:
            limits = state.body("card-limits")
            if limits is not None and not isinstance(limits.get("maxAmount"), int):
                return "maxAmount must be a whole number"
            return None

        async for event in subscription.events(validate):
            if isinstance(event, policyhub.Applied | policyhub.FromCache):
                print(event.state.revision, event.state.body("card-limits"))

    asyncio.run(main())

Services that are not async use `policyhub.sync.Watcher`, which follows in a
background thread.

Layout: `subscription` (settings, the asyncio API), `sync` (the threaded
one), `state` (states and events), `bundle` (JWS, JWKS, canonical JSON,
checkpoints), `tree` (signed notes, Merkle proofs, cosignatures), `token`
(token files), `errors` (every error it raises, under `PolicyhubError`);
private: `_session` (connect, resume, verify, decide, report), `_client`
(the channel and calls), `_cache`, `_endpoints`, `_backoff`, `_telemetry`;
`v1` is generated from the protos at build time.
"""

import logging

from .bundle import Jwk, Jwks
from .errors import HistoryError, Lagged, PolicyhubError, VerifyError, WatchError
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
)
from .subscription import (
    DEFAULT_REBALANCE_INTERVAL,
    DEFAULT_REPORT_SPREAD,
    HEARTBEAT_INTERVAL_HEADER,
    Subscription,
    Tls,
    Validate,
)
from .sync import Watcher
from .token import TokenSource, token_file

# A library logs to "policyhub" and leaves where it goes to the application.
logging.getLogger("policyhub").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_REBALANCE_INTERVAL",
    "DEFAULT_REPORT_SPREAD",
    "HEARTBEAT_INTERVAL_HEADER",
    "Applied",
    "CheckpointFresh",
    "CheckpointStale",
    "Connected",
    "Disconnected",
    "Event",
    "FromCache",
    "HistoryError",
    "HistoryRefused",
    "HistoryRestored",
    "Jwk",
    "Jwks",
    "Lagged",
    "PolicyhubError",
    "Refused",
    "Rejected",
    "Source",
    "State",
    "Subscription",
    "Tls",
    "TokenSource",
    "Validate",
    "VerifiedBundle",
    "VerifyError",
    "WatchError",
    "Watcher",
    "token_file",
]
