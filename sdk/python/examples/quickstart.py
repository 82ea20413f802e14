"""Follows a namespace with the Python SDK and prints every verified state,
refusing one whose `card-limits` has no whole `maxAmount`: the quick start
of the book's Python page.

    policyhub token --subject payments-runtime --role payments:reader > runtime.token
    python quickstart.py --server http://127.0.0.1:50051 --token-file runtime.token

`--token-file` names the file holding the runtime's token, read again on
every call (none: no token, for a server started with `--insecure`).
`--states N` stops after N states put in force (for the scripts that run it).
"""

from __future__ import annotations

import argparse
import asyncio
import json

import policyhub


def validate(state: policyhub.State) -> str | None:
    """The application's own check: a refusal is reported REJECTED, with
    this reason, and the state before stays in force."""
    limits = state.body("card-limits")
    if limits is not None and not isinstance(limits.get("maxAmount"), int):
        return "maxAmount must be a whole number"
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:50051")
    parser.add_argument("--namespace", default="payments")
    parser.add_argument("--cache-dir", default="cache")
    parser.add_argument("--token-file", help="the file holding the runtime's bearer token")
    parser.add_argument("--states", type=int, default=0, help="stop after this many (0: never)")
    args = parser.parse_args()

    subscription = policyhub.Subscription(
        args.server,
        args.namespace,
        runtime_id="quickstart",
        cache_dir=args.cache_dir,
        token=policyhub.token_file(args.token_file) if args.token_file else None,
    )
    states = 0
    async for event in subscription.events(validate):
        match event:
            case policyhub.Applied(state) | policyhub.FromCache(state):
                bodies = {name: bundle.body for name, bundle in state.bundles.items()}
                print(f"revision {state.revision} ({state.source.value}): {json.dumps(bodies)}")
                states += 1
                if states == args.states:
                    return
            case policyhub.Rejected(revision, reason):
                print(f"refused revision {revision}: {reason}")
            case policyhub.Disconnected(reason, retry_in, _):
                print(f"lost the server ({reason}); retrying in {retry_in:.1f} s")
            case _:
                pass


if __name__ == "__main__":
    asyncio.run(main())
