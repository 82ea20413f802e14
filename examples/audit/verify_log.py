#!/usr/bin/env python3
"""Verifies policyhub's event-log hash chain without policyhub's code.

Reads the output of `policyhub list-events -o json --limit N` (the protobuf
JSON mapping of ListEventsResponse, covering the whole log) on standard
input, rebuilds each event's canonical form as the README defines it, and
checks every link. Prints the head and exits 0, or names the first event
that does not follow the one before it and exits 1. Standard library only.
"""
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


def main() -> int:
    events = sorted(json.load(sys.stdin).get("events", []), key=lambda event: int(event["id"]))
    previous, after = "", "the start of the log"
    for event in events:
        computed = "sha256:" + hashlib.sha256(canonical(event, previous)).hexdigest()
        if event.get("hash", "") != computed:
            print(f"event {event['id']} does not follow {after}", file=sys.stderr)
            return 1
        previous, after = computed, f"event {event['id']}"
    print(f"{len(events)} events verified; head {previous}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
