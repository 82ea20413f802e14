"""The subscription's history: the signed checkpoints it verifies (their
freshness is `freshness`'s), the server's log's tree it follows by
consistency proofs, and a declared restore it takes once. It reads and
updates the `SubscriptionState`, which imports nothing of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from .. import bundle as jose
from .._client import Client
from ..errors import HistoryError, VerifyError
from ..state import Event, HistoryRestored
from ..tree import Diverges, ProveFrom, RestoreProof, Same, TreeHead, verify_note
from ..v1 import types_pb2
from .failure import History, Permanent, Transient, from_rpc_error, rpc

if TYPE_CHECKING:
    from .subscription_state import SubscriptionState

_log = logging.getLogger("policyhub")


async def take_checkpoint(
    state: SubscriptionState, checkpoint: types_pb2.Checkpoint, client: Client
) -> Event | None:
    """Verifies and takes a checkpoint of the stream; the event when it
    ends a stale spell. One that does not verify ends the connection."""
    if not checkpoint.jws or state.freshness.holds(checkpoint.jws):
        return None
    await refetch_unless_known(state, checkpoint.jws, client)
    try:
        claims = jose.verify_checkpoint(checkpoint.jws, state.jwks)
    except VerifyError as error:
        raise Transient(f"a checkpoint does not verify: {error}") from error
    return state.freshness.observe(claims, checkpoint.jws)


async def refetch_unless_known(state: SubscriptionState, jws: str, client: Client) -> None:
    """Fetches the JWKS again when `jws` names a key it does not hold."""
    try:
        known = state.jwks.knows(jose.key_id(jws))
    except VerifyError:
        known = False
    if not known:
        with contextlib.suppress(Transient, Permanent):
            await state.refresh_keys(client)


def verified_size(state: SubscriptionState) -> int:
    """The size of the server's tree as verified last (0: none yet)."""
    return state.tree.head.size if state.tree.head is not None else 0


async def follow_tree(
    state: SubscriptionState, checkpoint: types_pb2.Checkpoint, client: Client
) -> HistoryRestored | None:
    """Follows the server's log's tree from a checkpoint's note: the
    first one is remembered; a newer tree only with a consistency proof;
    one that does not extend it only when the server proves a declared
    restore; anything else raises `History`."""
    if state.cached_tree is not None:
        note, state.cached_tree = state.cached_tree, None
        try:
            head = verify_note(note, state.tree.origin, state.jwks)
            state.tree.origin, state.tree.head = head.origin, head
        except VerifyError as error:
            _log.error("refusing the cached tree: %s", error)
    held = state.tree.head
    if not checkpoint.note or (held is not None and held.note == checkpoint.note):
        return None
    try:
        offered = verify_note(checkpoint.note, state.tree.origin, state.jwks)
    except VerifyError:
        # Perhaps a key rotated since the keys were fetched.
        await state.refresh_keys(client)
        try:
            offered = verify_note(checkpoint.note, state.tree.origin, state.jwks)
        except VerifyError as error:
            raise History(str(error)) from error
    try:
        judgement = state.tree.judge(offered)
    except HistoryError as error:
        raise History(str(error)) from error
    if isinstance(judgement, Same):
        return None
    if isinstance(judgement, Diverges):
        return await take_restore(state, offered, judgement.reason, client)
    assert isinstance(judgement, ProveFrom)
    proof: list[bytes] = []
    if state.tree.head is not None:
        carried = carried_proof(checkpoint, judgement.size, offered.size)
        if carried is not None:
            proof = carried
        else:
            proof = await rpc(client.consistency_proof(judgement.size, offered.size))
    try:
        state.tree.extend(offered, proof)
    except HistoryError as error:
        return await take_restore(state, offered, str(error), client)
    await remember_tree(state)
    return None


def carried_proof(
    checkpoint: types_pb2.Checkpoint, old_size: int, new_size: int
) -> list[bytes] | None:
    """The proof a watch message's checkpoint carries, when it is the one
    from the tree of `old_size` to the tree of `new_size`: checked as one
    asked of the server would be, it spares the call."""
    if not checkpoint.HasField("consistency_proof"):
        return None
    carried = checkpoint.consistency_proof
    if (carried.old_size, carried.new_size) != (old_size, new_size):
        return None
    return list(carried.hashes)


async def take_restore(
    state: SubscriptionState, offered: TreeHead, diverges: str, client: Client
) -> HistoryRestored:
    from_size, to_size = verified_size(state), offered.size
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
        reason = state.tree.restore(offered, proof)
    except HistoryError as error:
        raise History(f"{diverges}; {error}") from error
    await remember_tree(state)
    _log.warning(
        "took the server's restored history (%d to %d events), as its operator declared: %s",
        from_size,
        to_size,
        reason,
    )
    return HistoryRestored(reason, from_size, to_size)


async def remember_tree(state: SubscriptionState) -> None:
    cache, head = state.cache, state.tree.head
    if cache is None or head is None:
        return
    try:
        await asyncio.to_thread(cache.save_tree, head.note)
        if state.tree.restored_through is not None:
            await asyncio.to_thread(cache.save_restore, state.tree.restored_through)
    except OSError as error:
        _log.warning("cannot cache the server's tree: %s", error)
