"""The shared conformance vectors (conformance/vectors/), which the server
writes from its own code: this SDK must reproduce its canonical JSON and
digests byte for byte, verify every Merkle proof of them and refuse each
proof altered, and take or refuse each signed bundle as they say."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from policyhub import Source, State, VerifiedBundle
from policyhub._cache import Cache
from policyhub._endpoints import Endpoints
from policyhub.bundle import (
    Jwks,
    VerifyError,
    canonical_json,
    digest_of,
    key_id,
    verify_bundle,
    verify_envelope,
)
from policyhub.tree import cosigned_by, leaf_hash, verify_consistency, verify_inclusion, verify_note

VECTORS = Path(__file__).resolve().parents[3] / "conformance" / "vectors"


def vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))


CANONICAL = vectors("canonical-json.json")["cases"]
MERKLE = vectors("merkle.json")
BUNDLES = vectors("bundles.json")
RANKING = vectors("ranking.json")
NOTES = vectors("notes.json")
CACHE = vectors("cache.json")


@pytest.mark.parametrize("case", CANONICAL, ids=[case["name"] for case in CANONICAL])
def test_canonical_json_and_digests_are_the_servers(case: dict[str, str]) -> None:
    value = json.loads(case["input"])
    assert canonical_json(value).decode("utf-8") == case["canonical"]
    assert digest_of(value) == case["digest"]


def tampered(proof: list[bytes], root: bytes) -> tuple[list[bytes], bytes]:
    """`proof` with one bit of its first hash flipped, or (an empty proof)
    `root` with one flipped."""

    def flip(hash_: bytes) -> bytes:
        return bytes([hash_[0] ^ 1]) + hash_[1:]

    if proof:
        return [flip(proof[0]), *proof[1:]], root
    return proof, flip(root)


def test_every_merkle_proof_verifies_and_none_altered() -> None:
    leaves = [leaf.encode("utf-8") for leaf in MERKLE["leaves"]]
    assert [leaf_hash(leaf).hex() for leaf in leaves] == MERKLE["leaf_hashes"]
    roots = {root["tree_size"]: bytes.fromhex(root["root"]) for root in MERKLE["roots"]}
    for case in MERKLE["inclusion"]:
        size, index = case["tree_size"], case["leaf_index"]
        proof = [bytes.fromhex(hash_) for hash_ in case["proof"]]
        leaf = leaf_hash(leaves[index])
        assert verify_inclusion(index, size, leaf, roots[size], proof), case
        proof, root = tampered(proof, roots[size])
        assert not verify_inclusion(index, size, leaf, root, proof), case
    for case in MERKLE["consistency"]:
        old, new = case["old_size"], case["new_size"]
        proof = [bytes.fromhex(hash_) for hash_ in case["proof"]]
        assert verify_consistency(old, new, roots[old], roots[new], proof), case
        proof, root = tampered(proof, roots[new])
        assert not verify_consistency(old, new, roots[old], root, proof), case


@pytest.mark.parametrize("case", BUNDLES["cases"], ids=[case["name"] for case in BUNDLES["cases"]])
def test_each_bundle_is_taken_or_refused_as_the_vectors_say(case: dict[str, Any]) -> None:
    jwks = Jwks.from_json(BUNDLES["jwks"])
    envelope = case["envelope"]
    try:
        verify_envelope(
            case["jws"],
            namespace=envelope["namespace"],
            name=envelope["name"],
            version=envelope["version"],
            digest=envelope["digest"],
            jwks=jwks,
        )
    except VerifyError:
        taken = False
    else:
        taken = True
    assert taken == case["valid"]


def test_each_ranking_is_the_vectors() -> None:
    for case in RANKING["cases"]:
        assert Endpoints(case["endpoints"], case["runtime_id"]).ranked == case["ranking"], case


@pytest.mark.parametrize("case", NOTES["cases"], ids=[case["name"] for case in NOTES["cases"]])
def test_each_note_is_verified_as_the_vectors_say(case: dict[str, Any]) -> None:
    jwks = Jwks.from_json(NOTES["jwks"])
    if case["tree"] is None:
        with pytest.raises(VerifyError):
            verify_note(case["note"], case["origin"], jwks)
    else:
        head = verify_note(case["note"], case["origin"], jwks)
        assert (head.size, head.root.hex()) == (case["tree"]["size"], case["tree"]["root"])
    if "cosigned_by" not in case:
        return
    if case["cosigned_by"] is None:
        with pytest.raises(VerifyError):
            cosigned_by(case["note"], NOTES["witnesses"])
    else:
        assert cosigned_by(case["note"], NOTES["witnesses"]) == case["cosigned_by"]


def shared_state() -> tuple[State, Jwks]:
    """The state of the shared cache vectors, as this SDK puts it in force."""
    jwks = Jwks.from_json(CACHE["jwks"])
    namespace = CACHE["namespace"]
    bundles = {}
    for cached in CACHE["bundles"]:
        claims = verify_bundle(cached["jws"], jwks)
        name = claims.sub.removeprefix(f"{namespace}/")
        bundles[name] = VerifiedBundle(
            name=name,
            version=claims.ver,
            label=claims.label,
            digest=claims.digest,
            revision=cached["revision"],
            key_id=key_id(cached["jws"]),
            body=claims.body,
            jws=cached["jws"],
        )
    state = State(
        namespace=namespace,
        revision=CACHE["revision"],
        bundles=bundles,
        verified_at=CACHE["verified_at_unix_ms"] / 1000,
    )
    return state, jwks


def test_the_cache_is_written_as_before_and_every_librarys_read_back(tmp_path: Path) -> None:
    """This SDK writes the shared state into its cache as
    conformance/vectors/cache/python.state.json holds it (UPDATE_VECTORS=1
    writes it anew), and reads back every library's cache of it, verified
    again, as the state it was."""
    state, jwks = shared_state()
    cache = Cache(tmp_path / "ours", state.namespace, [])
    cache.save(state, jwks)
    written = cache.path.read_bytes()
    ours = VECTORS / "cache" / "python.state.json"
    if os.environ.get("UPDATE_VECTORS"):
        ours.parent.mkdir(exist_ok=True)
        ours.write_bytes(written)
        return
    assert ours.read_bytes() == written
    for library in ("rust", "python", "typescript", "go"):
        cache = Cache(tmp_path / library, state.namespace, [])
        cache.path.parent.mkdir()
        shutil.copy(VECTORS / "cache" / f"{library}.state.json", cache.path)
        loaded = cache.load()
        assert loaded is not None, library
        loaded_state, loaded_jwks, revoked = loaded
        assert loaded_state.source == Source.CACHE, library
        assert (loaded_state.revision, loaded_state.bundles) == (state.revision, state.bundles), (
            library
        )
        assert loaded_state.verified_at == state.verified_at, library
        assert (loaded_jwks.to_json(), revoked) == (jwks.to_json(), frozenset()), library
