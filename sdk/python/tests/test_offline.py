"""Unit tests of what the SDK checks offline: bundles, checkpoints' notes,
Merkle proofs, witness cosignatures, the cache, a signing key's revocation,
endpoints and backoff."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from policyhub.v1 import bundle_service_pb2 as pb
from policyhub.v1 import types_pb2

from policyhub import Applied, Event, FromCache, Rejected, Source, State, VerifiedBundle, token_file
from policyhub._backoff import Backoff
from policyhub._cache import Cache, CacheError
from policyhub._client import Client, Reporter, ReportFailed
from policyhub._endpoints import Endpoints
from policyhub._session.revision import Revision
from policyhub._session.settings import Settings
from policyhub._session.subscription_state import SubscriptionState
from policyhub._telemetry import Telemetry
from policyhub.bundle import (
    BUNDLE_TYPE,
    Jwk,
    Jwks,
    VerifyError,
    digest_of,
    thumbprint,
    verify_bundle,
    verify_envelope,
)
from policyhub.tree import (
    Diverges,
    HistoryError,
    ProveFrom,
    Remembered,
    RestoreProof,
    TreeHead,
    cosigned_by,
    leaf_hash,
    node_hash,
    note_key_id,
    verify_consistency,
    verify_inclusion,
    verify_note,
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        x = b64url(self.raw)
        self.jwk = Jwk(kty="OKP", crv="Ed25519", x=x, kid=thumbprint(x))

    def bundle(self, sub: str, ver: int, body: dict[str, Any], **header: object) -> str:
        claims = {
            "iss": "t",
            "sub": sub,
            "ver": ver,
            "digest": digest_of(body),
            "body": body,
            "iat": 1,
        }
        headers = {"typ": BUNDLE_TYPE, "kid": self.jwk.kid, **header}
        return jwt.encode(claims, self.key, algorithm="EdDSA", headers=headers)


def test_thumbprint_matches_rfc_8037() -> None:
    assert thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo") == (
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    )


def test_the_digest_ignores_key_order_and_number_spelling() -> None:
    assert digest_of({"b": 1, "a": [1.0, "x"]}) == digest_of(json.loads('{"a":[1,"x"],"b":1.0}'))


def test_a_bundle_verifies_and_a_tampered_one_does_not() -> None:
    signer = Signer()
    jwks = Jwks((signer.jwk,))
    jws = signer.bundle("ns/limits", 3, {"max": 10})
    claims = verify_envelope(
        jws, namespace="ns", name="limits", version=3, digest=digest_of({"max": 10}), jwks=jwks
    )
    assert claims.body == {"max": 10}
    with pytest.raises(VerifyError, match="signed for"):
        verify_envelope(
            jws, namespace="ns", name="other", version=3, digest=claims.digest, jwks=jwks
        )
    header, payload, signature = jws.split(".")
    altered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    altered["body"] = {"max": 11}
    forged = ".".join([header, b64url(json.dumps(altered).encode()), signature])
    with pytest.raises(VerifyError, match="signature check failed"):
        verify_bundle(forged, jwks)
    with pytest.raises(VerifyError, match="unknown key"):
        verify_bundle(Signer().bundle("ns/limits", 3, {"max": 10}), jwks)


def test_alg_none_is_refused() -> None:
    signer = Signer()
    header = b64url(json.dumps({"alg": "none", "typ": BUNDLE_TYPE, "kid": signer.jwk.kid}).encode())
    body = {"max": 1}
    claims = {"sub": "ns/a", "ver": 1, "digest": digest_of(body), "body": body}
    unsigned = f"{header}.{b64url(json.dumps(claims).encode())}."
    with pytest.raises(VerifyError, match="not EdDSA"):
        verify_bundle(unsigned, Jwks((signer.jwk,)))


def test_a_compact_jws_is_read_strictly() -> None:
    """Critical extensions, which policyhub never writes, are refused, as
    are segments that are not base64url, and a JWS of other than three
    segments; a good bundle still verifies after a key was seen before."""
    signer = Signer()
    jwks = Jwks((signer.jwk,))
    good = signer.bundle("ns/a", 1, {"a": 1})
    assert verify_bundle(good, jwks).body == {"a": 1}
    assert verify_bundle(good, jwks).body == {"a": 1}
    with pytest.raises(VerifyError, match="critical extensions"):
        verify_bundle(signer.bundle("ns/a", 1, {"a": 1}, crit=["exp"], exp=1), jwks)
    header, payload, signature = good.split(".")
    for bad in (
        f"{header}.{payload}.{signature[:-2]}!!",
        f"{header}.{payload}+.{signature}",
        f"{header}.{payload}.{signature}=",
    ):
        with pytest.raises(VerifyError, match="signature check failed"):
            verify_bundle(bad, jwks)
    with pytest.raises(VerifyError, match="not a signed document"):
        verify_bundle(f"{header}.{payload}", jwks)
    with pytest.raises(VerifyError, match="not a signed document"):
        verify_bundle(f"{header}*.{payload}.{signature}", jwks)


def test_a_digest_that_does_not_match_the_body_is_refused() -> None:
    signer = Signer()
    claims = {"sub": "ns/a", "ver": 1, "digest": digest_of({"a": 1}), "body": {"a": 2}}
    jws = jwt.encode(
        claims, signer.key, algorithm="EdDSA", headers={"typ": BUNDLE_TYPE, "kid": signer.jwk.kid}
    )
    with pytest.raises(VerifyError, match="does not match the body"):
        verify_bundle(jws, Jwks((signer.jwk,)))


def tree_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 root of the leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return node_hash(tree_root(leaves[:split]), tree_root(leaves[split:]))


def consistency(old: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 SUBPROOF(m, D[n], true)."""

    def subproof(m: int, d: list[bytes], complete: bool) -> list[bytes]:
        n = len(d)
        if m == n:
            return [] if complete else [tree_root(d)]
        k = 1
        while k * 2 < n:
            k *= 2
        if m <= k:
            return [*subproof(m, d[:k], complete), tree_root(d[k:])]
        return [*subproof(m - k, d[k:], False), tree_root(d[:k])]

    return subproof(old, leaves, True)


def inclusion(index: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if index < k:
        return [*inclusion(index, leaves[:k]), tree_root(leaves[k:])]
    return [*inclusion(index - k, leaves[k:]), tree_root(leaves[:k])]


def test_consistency_and_inclusion_proofs_verify_and_tampered_ones_do_not() -> None:
    leaves = [leaf_hash(str(i).encode()) for i in range(13)]
    for new in range(1, 14):
        root = tree_root(leaves[:new])
        for old in range(1, new + 1):
            proof = consistency(old, leaves[:new])
            old_root = tree_root(leaves[:old])
            assert verify_consistency(old, new, old_root, root, proof), (old, new)
            if proof:
                bad = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
                assert not verify_consistency(old, new, old_root, root, bad), (old, new)
        for index in range(new):
            proof = inclusion(index, leaves[:new])
            assert verify_inclusion(index, new, leaves[index], root, proof)
            assert not verify_inclusion(index, new, leaf_hash(b"other"), root, proof)


def log_note(signer: Signer, origin: str, size: int, root: bytes) -> str:
    text = f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"
    raw = signer.raw
    key_id = note_key_id(origin, b"\x01" + raw)
    signature = signer.key.sign(text.encode())
    line = f"\u2014 {origin} " + base64.b64encode(struct.pack(">I", key_id) + signature).decode()
    return f"{text}\n{line}\n"


def cosign(note: str, name: str, key: Ed25519PrivateKey, time: int) -> tuple[str, str]:
    text = note[: note.index("\n\n") + 1]
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    vkey_bytes = b"\x04" + raw
    key_id = note_key_id(name, vkey_bytes)
    vkey = f"{name}+{key_id:08x}+{base64.b64encode(vkey_bytes).decode()}"
    signature = key.sign(f"cosignature/v1\ntime {time}\n".encode() + text.encode())
    blob = struct.pack(">I", key_id) + struct.pack(">Q", time) + signature
    return note + f"\u2014 {name} {base64.b64encode(blob).decode()}\n", vkey


def test_a_checkpoint_note_verifies_under_the_jwks_and_the_witnesses_count() -> None:
    signer = Signer()
    jwks = Jwks((signer.jwk,))
    root = hashlib.sha256(b"root").digest()
    note = log_note(signer, "log.example/a", 3, root)
    head = verify_note(note, None, jwks)
    assert (head.origin, head.size, head.root) == ("log.example/a", 3, root)
    with pytest.raises(VerifyError):
        verify_note(note, "log.example/b", jwks)
    with pytest.raises(VerifyError):
        verify_note(note, None, Jwks((Signer().jwk,)))
    witness = Ed25519PrivateKey.generate()
    cosigned, vkey = cosign(note, "witness.example/w1", witness, 1_700_000_000)
    assert cosigned_by(note, [vkey]) == []
    assert cosigned_by(cosigned, [vkey]) == ["witness.example/w1"]
    remembered = Remembered(witnesses=[vkey], cosignatures=1)
    with pytest.raises(HistoryError, match="carries 0 of the 1"):
        remembered.judge(head)
    assert remembered.judge(verify_note(cosigned, None, jwks)) == ProveFrom(0)


def test_a_proven_restore_is_taken_once_and_a_wound_back_tree_otherwise_refused() -> None:
    first = leaf_hash(b'{"kind":"ACTIVATED"}')
    canonical = '{"kind":"RESTORED","reason":"disk lost"}'
    root = node_hash(first, leaf_hash(canonical.encode()))
    offered = TreeHead("log.example/a", 2, root, "")
    held = TreeHead("log.example/a", 5, b"\x07" * 32, "")
    remembered = Remembered(origin="log.example/a", head=held)
    judged = remembered.judge(offered)
    assert isinstance(judged, Diverges) and "wound back" in judged.reason
    proof = RestoreProof(canonical, 1, 2, [first])
    tampered = RestoreProof(canonical, 1, 2, [leaf_hash(b"x")])
    with pytest.raises(HistoryError, match="does not verify"):
        remembered.restore(offered, tampered)
    assert remembered.restore(offered, proof) == "disk lost"
    with pytest.raises(HistoryError, match="not newer"):
        remembered.restore(offered, proof)


def test_a_saved_state_loads_back_verified_and_a_tampered_cache_is_refused(tmp_path: Path) -> None:
    signer = Signer()
    jwks = Jwks((signer.jwk,))
    body = {"max": 10}
    jws = signer.bundle("ns/limits", 2, body)
    bundle = VerifiedBundle("limits", 2, None, digest_of(body), 4, signer.jwk.kid, body, jws)
    cache = Cache(tmp_path, "ns", [])
    cache.save(State("ns", 4, {"limits": bundle}, Source.SERVER, 1_700_000_000.0), jwks)
    loaded = cache.load()
    assert loaded is not None
    state, _, _ = loaded
    assert (state.revision, state.source, state.body("limits")) == (4, Source.CACHE, body)
    assert state.verified_at == 1_700_000_000.0
    text = cache.path.read_text().replace(jws[-10:], "A" * 10)
    cache.path.write_text(text)
    with pytest.raises(CacheError):
        cache.load()
    assert Cache(tmp_path, "other", []).load() is None


def test_a_cached_state_signed_by_a_revoked_key_is_refused(tmp_path: Path) -> None:
    signer = Signer()
    jwks = Jwks((signer.jwk,))
    body = {"max": 10}
    jws = signer.bundle("ns/limits", 2, body)
    bundle = VerifiedBundle("limits", 2, None, digest_of(body), 4, signer.jwk.kid, body, jws)
    state = State("ns", 4, {"limits": bundle}, Source.SERVER, 1_700_000_000.0)
    cache = Cache(tmp_path, "ns", [])
    cache.save(state, jwks)
    assert "revoked_key_ids" not in json.loads(cache.path.read_text()), "as earlier versions wrote"
    loaded = cache.load()
    assert loaded is not None and loaded[2] == frozenset(), "the good cache loads"
    cache.save(state, jwks, frozenset({signer.jwk.kid}))
    assert json.loads(cache.path.read_text())["revoked_key_ids"] == [signer.jwk.kid]
    with pytest.raises(CacheError, match="revoked key"):
        cache.load()


def test_two_subscriptions_of_one_namespace_write_one_cache_directory_at_once(
    tmp_path: Path,
) -> None:
    signer = Signer()
    jwks = Jwks((signer.jwk,))
    body = {"max": 10}
    jws = signer.bundle("ns/limits", 2, body)
    bundle = VerifiedBundle("limits", 2, None, digest_of(body), 4, signer.jwk.kid, body, jws)
    state = State("ns", 4, {"limits": bundle}, Source.SERVER, 1_700_000_000.0)
    reader = Cache(tmp_path, "ns", [])
    reader.save(state, jwks)
    reader.save_tree("a note")
    # Each subscription keeps its own cache of the namespace, in one directory.
    writers = [Cache(tmp_path, "ns", []) for _ in range(2)]
    failures: list[BaseException] = []

    def write(cache: Cache) -> None:
        try:
            for leaf in range(100):
                cache.save(state, jwks)
                cache.save_tree("a note")
                cache.save_restore(leaf)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=write, args=(cache,)) for cache in writers]
    for thread in threads:
        thread.start()
    reads = 0
    while any(thread.is_alive() for thread in threads):
        loaded = reader.load()
        assert loaded is not None and loaded[0].body("limits") == body
        assert reader.load_tree() == "a note"
        reads += 1
    for thread in threads:
        thread.join()
    assert failures == [], "no write fails"
    assert reads > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "ns.state.json",
        "ns.state.restore",
        "ns.state.tree",
    ], "no temporary file is left"


def test_the_ranking_is_a_function_of_the_runtime_id_and_spreads_a_fleet() -> None:
    addresses = [f"http://replica-{i}:50051" for i in range(3)]
    once = Endpoints(addresses, "enforcer-7")
    again = Endpoints(list(reversed(addresses)), "enforcer-7")
    assert once.ranked == again.ranked
    counts: dict[str, int] = {}
    for i in range(3000):
        preferred = Endpoints(addresses, f"runtime-{i}").preferred
        counts[preferred] = counts.get(preferred, 0) + 1
    assert all(850 <= count <= 1150 for count in counts.values()), counts


def test_failures_move_down_the_ranking_and_a_whole_round_calls_for_the_backoff() -> None:
    endpoints = Endpoints([f"http://r{i}" for i in range(3)], "enforcer-1")
    ranked = list(endpoints.ranked)
    assert not endpoints.failed() and endpoints.current == ranked[1]
    assert not endpoints.failed() and endpoints.current == ranked[2]
    assert endpoints.failed() and endpoints.current == ranked[0]


def test_backoff_delays_stay_under_a_doubling_capped_bound_and_spread_from_zero() -> None:
    backoff = Backoff(0.1, 0.8)
    for bound in (0.1, 0.2, 0.4, 0.8, 0.8):
        assert backoff.next_delay() < bound
    early = sum(Backoff(1.0, 1.0).next_delay() < 0.25 for _ in range(1000))
    assert 150 < early < 350, early


def test_a_token_file_is_read_again_and_the_last_good_token_kept(tmp_path: Path) -> None:
    file = tmp_path / "token"
    source = token_file(file)
    assert source() is None
    file.write_text("first\n")
    assert source() == "first"
    file.write_text(" \n")
    assert source() == "first"
    file.write_text("second")
    assert source() == "second"


def written_a_minute_ago(path: Path) -> None:
    """Sets the modification time of the file `path` leads to a minute back,
    as a token written a while ago has it."""
    past = time.time() - 60
    os.utime(path, (past, past))


def project(directory: Path, generation: int, token: str) -> None:
    """Writes `token` as the kubelet does: a new directory, then the `..data`
    symlink swapped onto it by a rename."""
    data = directory / f"..{generation}"
    data.mkdir()
    (data / "token").write_text(token)
    (directory / "..data_tmp").symlink_to(data)
    (directory / "..data_tmp").rename(directory / "..data")


def test_an_unchanged_token_file_is_read_once_and_a_rotation_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    read_text = Path.read_text

    def counted(self: Path, *args: Any, **kwargs: Any) -> str:
        reads.append(self)
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    project(tmp_path, 1, "first\n")
    (tmp_path / "token").symlink_to("..data/token")
    written_a_minute_ago(tmp_path / "token")
    source = token_file(tmp_path / "token")
    assert [source() for _ in range(100)] == ["first"] * 100
    assert len(reads) == 1, "an unchanged file is read once"
    project(tmp_path, 2, "second\n")
    assert source() == "second"
    written_a_minute_ago(tmp_path / "token")
    assert [source() for _ in range(100)] == ["second"] * 100
    assert len(reads) == 3, "the rotated file is read once it changed, and once settled"


def test_a_token_file_rewritten_in_place_at_once_is_read_again(tmp_path: Path) -> None:
    # Same inode, same size, and most likely the same modification time,
    # to the file system's clock.
    file = tmp_path / "token"
    source = token_file(file)
    for token in ("aaaa", "bbbb", "cccc"):
        file.write_text(token)
        assert source() == token


class KeyServer:
    """Answers GetSigningKeys as a server does: its keys and the revoked ids."""

    def __init__(self, *signers: Signer) -> None:
        self.jwks = Jwks(tuple(signer.jwk for signer in signers))
        self.revoked: frozenset[str] = frozenset()
        self.fetched = 0

    async def signing_keys(self) -> tuple[Jwks, frozenset[str]]:
        self.fetched += 1
        return self.jwks, self.revoked


def subscription_state(cache_dir: Path) -> SubscriptionState:
    settings = Settings(
        endpoints=["http://127.0.0.1:1"],
        namespace="ns",
        names=[],
        runtime_id=None,
        labels={},
        cache_dir=str(cache_dir),
        token=None,
        tls=None,
        heartbeat_interval=None,
        backoff_initial=0.1,
        backoff_max=1.0,
        rebalance_interval=60.0,
        report_spread=0.0,
        max_checkpoint_age=None,
        retry_when_refused=False,
        log_origin=None,
        witnesses=[],
        cosignatures=0,
    )
    return SubscriptionState(settings, lambda _: None, Telemetry("ns"))


def revision(kind: int, number: int, signer: Signer, version: int) -> Revision:
    body = {"max": version}
    bundle = types_pb2.Bundle(
        namespace="ns",
        name="limits",
        version=version,
        digest=digest_of(body),
        jws=signer.bundle("ns/limits", version, body),
        key_id=signer.jwk.kid,
        revision=number,
    )
    return Revision(kind, number, False, [bundle])


def test_a_revoked_key_is_followed_replays_refused_and_the_cache_remembers(
    tmp_path: Path,
) -> None:
    old, new = Signer(), Signer()
    server = KeyServer(old)
    client = cast(Client, server)

    async def follow() -> None:
        state = subscription_state(tmp_path)
        first = revision(pb.WATCH_EVENT_KIND_SNAPSHOT, 1, old, 1)
        assert isinstance(await state.decide(first, client), Applied)
        # The server signs with a new key, revokes the old one and signs
        # version 1 again at a new revision.
        server.jwks, server.revoked = Jwks((new.jwk,)), frozenset({old.jwk.kid})
        again = await state.decide(revision(pb.WATCH_EVENT_KIND_UPDATE, 2, new, 1), client)
        assert isinstance(again, Applied) and again.state.revision == 2
        assert state.revoked == {old.jwk.kid}
        replayed = await state.decide(first, client)
        assert isinstance(replayed, Rejected), "an old message a revoked key signed is refused"
        assert "revoked key" in replayed.reason and replayed.revision == 1
        fetched = server.fetched
        later = await state.decide(revision(pb.WATCH_EVENT_KIND_UPDATE, 3, old, 2), client)
        assert isinstance(later, Rejected)
        assert "does not verify: signed by revoked key" in later.reason
        assert server.fetched == fetched, "a revoked key is no unknown key to fetch again"
        assert (state.applied.revision, state.applied.bundles["limits"].key_id) == (2, new.jwk.kid)

        # Restarted with the server away: the cache holds the revocation.
        restarted = subscription_state(tmp_path)
        events: list[Event] = []

        async def emit(event: Event) -> None:
            events.append(event)

        await restarted.start(emit)
        assert [type(event) for event in events] == [FromCache]
        assert restarted.revoked == {old.jwk.kid}
        assert restarted.signed_by_revoked(first.bundles) is not None

    asyncio.run(follow())


def test_a_revocation_that_concerns_the_state_in_force_is_cached_at_once(tmp_path: Path) -> None:
    old, new = Signer(), Signer()
    server = KeyServer(old)
    client = cast(Client, server)

    async def follow() -> None:
        state = subscription_state(tmp_path)
        held = revision(pb.WATCH_EVENT_KIND_SNAPSHOT, 1, old, 1)
        assert isinstance(await state.decide(held, client), Applied)
        server.jwks, server.revoked = Jwks((new.jwk,)), frozenset({old.jwk.kid})
        await state.refresh_keys(client)
        with pytest.raises(CacheError, match="revoked key"):
            Cache(tmp_path, "ns", []).load()

    asyncio.run(follow())


def test_a_report_on_a_stream_that_already_finished_fails_and_the_next_opens_another() -> None:
    """grpc.aio says a write on a call whose link was lost meanwhile with
    InvalidStateError, not with the call's status: the report fails as any
    report does (kept for the next try), never ending the subscription."""

    class Finished:
        async def write(self, request: pb.ReportStatusRequest) -> None:
            raise asyncio.InvalidStateError("RPC already finished.")

    class StubClient:
        call_timeout = 1.0
        opened = 0

        def report_stream(self) -> Finished:
            self.opened += 1
            return Finished()

    client = StubClient()
    reporter = Reporter(cast(Any, client))
    for _ in range(2):
        with pytest.raises(ReportFailed, match="had ended"):
            asyncio.run(reporter.send(pb.ReportStatusRequest()))
    assert client.opened == 2
