#!/usr/bin/env python3
"""Verifies policyhub's event-log hash chain and signed checkpoints without
policyhub's code.

Reads the output of `policyhub list-events -o json --limit N` (the protobuf
JSON mapping of ListEventsResponse, covering the whole log) on standard
input, rebuilds each event's canonical form as the README defines it, and
checks every link. With --checkpoints (the output of `policyhub
list-checkpoints -o json --limit N`) and --jwks (the output of `policyhub
get-signing-keys -o json`), checks each checkpoint's Ed25519 signature
(PyJWT) and that the log confirms what it states: its chain head is the hash
of its last event, its revision the newest any event up to it took.

Prints the head and exits 0, or names the first event that does not follow
the one before it, or the first checkpoint that does not hold, and exits 1.
The chain needs only the standard library; checkpoints need PyJWT with
cryptography.
"""
import argparse
import hashlib
import json
import sys
from datetime import datetime, timezone


def canonical(event: dict, previous: str) -> bytes:
    at = datetime.fromisoformat(event["at"].replace("Z", "+00:00")).astimezone(timezone.utc)
    fields = {
        "actor": event.get("actor", ""),
        "at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "keyId": event.get("keyId", ""),
        "kind": event["kind"].removeprefix("EVENT_KIND_"),
        "name": event.get("name", ""),
        "namespace": event.get("namespace", ""),
        "newVersion": int(event.get("newVersion", 0)),
        "previous": previous,
        "previousVersion": int(event.get("previousVersion", 0)),
        "reason": event.get("reason", ""),
        "requestId": event.get("requestId", ""),
        "revision": int(event.get("revision", 0)),
        "rolloutId": event.get("rolloutId", ""),
    }
    # RFC 8785 for an object of ASCII keys, strings and integers.
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def verify_chain(events: list) -> str:
    """The head of the chain, or exits naming the first broken link."""
    previous, after = "", "the start of the log"
    for event in events:
        computed = "sha256:" + hashlib.sha256(canonical(event, previous)).hexdigest()
        if event.get("hash", "") != computed:
            sys.exit(f"event {event['id']} does not follow {after}")
        previous, after = computed, f"event {event['id']}"
    return previous


def verify_checkpoints(events: list, checkpoints: list, jwks: dict) -> None:
    """Exits naming the first checkpoint that does not hold."""
    import jwt  # PyJWT, with cryptography for EdDSA

    keys = {key["kid"]: jwt.PyJWK(key) for key in jwks.get("keys", [])}
    for checkpoint in checkpoints:
        def unproven(why: str):
            sys.exit(
                f"the checkpoint of revision {checkpoint.get('revision', '0')} "
                f"signed {checkpoint.get('time', '')} does not hold: {why}"
            )

        token = checkpoint["jws"]
        header = jwt.get_unverified_header(token)
        if header.get("typ") != "policyhub-checkpoint+jwt" or header.get("alg") != "EdDSA":
            unproven(f"header {header}")
        key = keys.get(header.get("kid"))
        if key is None:
            unproven(f"signed by unknown key {header.get('kid')!r}")
        try:
            claims = jwt.decode(token, key, algorithms=["EdDSA"], options={"verify_exp": False})
        except jwt.InvalidTokenError as error:
            unproven(f"signature check failed: {error}")
        last = int(claims["lastEventId"])
        upto = [event for event in events if int(event["id"]) <= last]
        head = "" if last == 0 else (upto[-1]["hash"] if upto and int(upto[-1]["id"]) == last else None)
        if head is None:
            unproven(f"its last event {last} is not in the log")
        if head != claims["chainHead"]:
            unproven(f"it states chain head {claims['chainHead']!r} at event {last}, the log has {head!r}")
        revision = max((int(event.get("revision", 0)) for event in upto), default=0)
        if revision != int(claims["revision"]):
            unproven(f"it states revision {claims['revision']}, the log up to event {last} reaches revision {revision}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", help="the output of policyhub list-checkpoints -o json")
    parser.add_argument("--jwks", help="the output of policyhub get-signing-keys -o json")
    args = parser.parse_args()
    events = sorted(json.load(sys.stdin).get("events", []), key=lambda event: int(event["id"]))
    head = verify_chain(events)
    if args.checkpoints:
        with open(args.checkpoints) as checkpoints, open(args.jwks) as jwks:
            listed = json.load(checkpoints).get("checkpoints", [])
            verify_checkpoints(events, listed, json.load(jwks))
        print(f"{len(events)} events verified, {len(listed)} signed checkpoints hold; head {head}")
    else:
        print(f"{len(events)} events verified; head {head}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
