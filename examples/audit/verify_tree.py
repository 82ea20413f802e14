#!/usr/bin/env python3
"""Verifies proofs of policyhub's event log as a Merkle tree without
policyhub's code: written from RFC 9162 (sections 2.1.1, 2.1.3.2 and
2.1.4.2) and the C2SP signed-note and tlog-checkpoint specifications.

Every command takes --jwks (the output of `policyhub get-signing-keys -o
json`) and --origin (the origin line of the log the caller trusts), and
reads the notes and proofs from files the CLI wrote with `-o json`:

  note FILE          a checkpoint (one of `list-checkpoints -o json`'s, or
                     any JSON object with a "note"): its signature
  inclusion FILE     `get-inclusion-proof -o json` (newest tree): the note
                     it carries, the event's leaf in that tree, and that the
                     leaf's bytes are the ones the event's chain hash covers
  bundle BUNDLE PROOF  BUNDLE a bundle (`get-active -o json`), PROOF
                     `get-bundle-proof -o json` of it (newest tree): both
                     events are leaves of the tree the note signs, one the
                     PUBLISHED event of the bundle's version, the other the
                     ACTIVATED or ROLLED_BACK event that made it active at
                     the bundle's revision
  consistency OLD NEW  OLD a checkpoint, NEW `get-consistency-proof
                     --old-size <OLD's size> -o json`: the tree NEW's note
                     signs extends the one OLD's note signs

With --witness VKEY (repeatable; a witness's verifier key,
<name>+<hex key id>+base64(0x04 || Ed25519 key)) and --cosignatures K, every
note must also carry valid cosignatures of at least K of those witnesses
(C2SP tlog-cosignature, cosignature/v1).

Prints what it verified and exits 0, or says why not and exits 1. Needs
the standard library and `cryptography` (Ed25519).
"""
import argparse
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(why: str):
    sys.exit(why)


# RFC 9162 2.1.1: leaf and interior node hashes.
def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, path: list, root: bytes) -> bool:
    """RFC 9162 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes, path: list) -> bool:
    """RFC 9162 2.1.4.2 (a first tree of 0 leaves, or equal trees, need no
    proof)."""
    if first == 0:
        return not path
    if first == second:
        return not path and first_hash == second_hash
    if first > second or not path:
        return False
    if first & (first - 1) == 0:
        path = [first_hash] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


# C2SP signed-note.
def key_id(name: str, key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]


def split_note(note: str):
    """The note's text (ending in a newline) and its signature lines as
    (name, key id, signature)."""
    text, sep, signatures = note.rpartition("\n\n")
    if not sep:
        fail("not a signed note: no blank line before the signatures")
    text += "\n"
    lines = []
    for line in signatures.split("\n"):
        if not line:
            continue
        if not line.startswith("\u2014 "):
            fail(f"not a signature line: {line!r}")
        name, _, encoded = line[2:].rpartition(" ")
        blob = base64.b64decode(encoded, validate=True)
        if len(blob) < 5:
            fail(f"a signature too short: {line!r}")
        lines.append((name, blob[:4], blob[4:]))
    return text, lines


def verify_note(note: str, name: str, public_keys: list) -> str:
    """The text of `note` when one of `public_keys` (raw Ed25519) signed it
    under `name`; fails otherwise."""
    text, signatures = split_note(note)
    known = {key_id(name, b"\x01" + key): key for key in public_keys}
    for signer, kid, signature in signatures:
        if signer != name or kid not in known:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(known[kid]).verify(signature, text.encode())
        except InvalidSignature:
            fail(f"the signature of {signer} on the note does not verify")
        return text
    fail(f"no known key of {name} signed the note")


def witness_key(vkey: str):
    """A cosignature/v1 verifier key: (name, key id, raw Ed25519 key)."""
    name, kid, encoded = vkey.split("+", 2)
    key = base64.b64decode(encoded, validate=True)
    if len(key) != 33 or key[0] != 0x04 or key_id(name, key) != bytes.fromhex(kid):
        fail(f"not a cosignature/v1 verifier key: {vkey!r}")
    return name, key_id(name, key), key[1:]


def cosigners(note: str, witnesses: list) -> set:
    """The names of `witnesses` whose cosignature on `note` verifies: each
    signs "cosignature/v1\ntime <t>\n" followed by the note's text, the
    signature being the 8-byte big-endian t then the Ed25519 signature."""
    text, signatures = split_note(note)
    known = {(name, kid): key for name, kid, key in witnesses}
    names = set()
    for signer, kid, signature in signatures:
        key = known.get((signer, kid))
        if key is None:
            continue
        if len(signature) != 72:
            fail(f"the cosignature of {signer} is not 72 bytes")
        time = int.from_bytes(signature[:8], "big")
        message = f"cosignature/v1\ntime {time}\n{text}".encode()
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature[8:], message)
        except InvalidSignature:
            fail(f"the cosignature of {signer} on the note does not verify")
        names.add(signer)
    return names


def tree_head(text: str, origin: str):
    """C2SP tlog-checkpoint: the size and root hash of a verified note's
    text, whose origin line must be `origin`."""
    lines = text.split("\n")
    if len(lines) < 4:
        fail("not a checkpoint: fewer than three lines")
    if lines[0] != origin:
        fail(f"the checkpoint is of the log {lines[0]!r}, not of {origin!r}")
    if not lines[1].isdigit() or (lines[1] != "0" and lines[1].startswith("0")):
        fail(f"not a tree size: {lines[1]!r}")
    root = base64.b64decode(lines[2], validate=True)
    if len(root) != 32:
        fail("a root hash that is not 32 bytes")
    return int(lines[1]), root


def public_keys(jwks: dict) -> list:
    keys = []
    for key in jwks.get("keys", []):
        x = key["x"]
        keys.append(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
    return keys


def hashes(values: list) -> list:
    return [base64.b64decode(value) for value in values]


WITNESSES = []
COSIGNATURES = 0


def signed_tree(checkpoint: dict, origin: str, keys: list):
    note = checkpoint.get("note", "")
    if not note:
        fail("the checkpoint carries no note")
    head = tree_head(verify_note(note, origin, keys), origin)
    cosigned = cosigners(note, WITNESSES)
    if len(cosigned) < COSIGNATURES:
        fail(f"the note carries {len(cosigned)} of the {COSIGNATURES} witnesses' cosignatures required")
    return head


def proven_event(proof: dict, origin: str, keys: list):
    """The event of an inclusion proof (`get-inclusion-proof -o json`) and
    the size of the tree its note signs, once its leaf is proven in it."""
    size, root = signed_tree(proof.get("checkpoint", {}), origin, keys)
    if int(proof.get("treeSize", 0)) != size:
        fail(f"the proof is for a tree of {proof.get('treeSize')}, the note signs {size}")
    canonical = proof.get("canonicalEvent", "").encode()
    event = proof.get("event", {})
    if event.get("hash") != "sha256:" + hashlib.sha256(canonical).hexdigest():
        fail(f"the canonical form is not the one event {event.get('id')}'s hash covers")
    index = int(proof.get("leafIndex", 0))
    if not verify_inclusion(index, size, leaf_hash(canonical), hashes(proof.get("hashes", [])), root):
        fail(f"event {event.get('id')} is not leaf {index} of the tree of {size}")
    return event, size


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jwks", required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--witness", action="append", default=[])
    parser.add_argument("--cosignatures", type=int, default=0)
    parser.add_argument("command", choices=["note", "inclusion", "bundle", "consistency"])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    global WITNESSES, COSIGNATURES
    WITNESSES = [witness_key(vkey) for vkey in args.witness]
    COSIGNATURES = args.cosignatures
    keys = public_keys(json.load(open(args.jwks)))
    documents = [json.load(open(path)) for path in args.files]

    if args.command == "note":
        size, root = signed_tree(documents[0], args.origin, keys)
        print(f"the note of {args.origin} signs a tree of {size}, root {root.hex()}")
    elif args.command == "inclusion":
        event, size = proven_event(documents[0], args.origin, keys)
        print(f"event {event['id']} is leaf {documents[0].get('leafIndex', 0)} of the signed tree of {size}")
    elif args.command == "bundle":
        bundle, proof = documents[0], documents[1]
        published, size = proven_event(proof.get("published", {}), args.origin, keys)
        activated, same = proven_event(proof.get("activated", {}), args.origin, keys)
        if same != size:
            fail(f"the proofs are of trees of {size} and {same}, not of one")
        policy = (bundle.get("namespace"), bundle.get("name"), bundle.get("version"))
        for event, kinds in ((published, ["EVENT_KIND_PUBLISHED"]),
                             (activated, ["EVENT_KIND_ACTIVATED", "EVENT_KIND_ROLLED_BACK"])):
            if (event.get("namespace"), event.get("name"), event.get("newVersion")) != policy:
                fail(f"event {event['id']} is not of version {policy[2]} of {policy[0]}/{policy[1]}")
            if event.get("kind") not in kinds:
                fail(f"event {event['id']} is {event.get('kind')}, not one of {kinds}")
        if activated.get("revision") != bundle.get("revision"):
            fail(f"event {activated['id']} made the version active at revision {activated.get('revision')}, "
                 f"not at the bundle's {bundle.get('revision')}")
        print(f"version {policy[2]} of {policy[0]}/{policy[1]}: published in event {published['id']}, "
              f"made active at revision {bundle.get('revision')} in event {activated['id']}, "
              f"both in the signed tree of {size}")
    else:
        old, proof = documents[0], documents[1]
        old_size, old_root = signed_tree(old, args.origin, keys)
        new_size, new_root = signed_tree(proof.get("checkpoint", {}), args.origin, keys)
        if int(proof.get("oldSize", 0)) != old_size or int(proof.get("newSize", 0)) != new_size:
            fail("the proof is not between the trees the notes sign")
        if not verify_consistency(old_size, new_size, old_root, new_root, hashes(proof.get("hashes", []))):
            fail(f"the tree of {new_size} does not extend the tree of {old_size}")
        print(f"the signed tree of {new_size} extends the signed tree of {old_size}")


if __name__ == "__main__":
    main()
