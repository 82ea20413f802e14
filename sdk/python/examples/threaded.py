"""The same with the synchronous API, for a service that is not async: the
state in force, read from any thread while a background thread follows.

    python threaded.py --server http://127.0.0.1:50051 --namespace payments
"""

from __future__ import annotations

import argparse
import json

import policyhub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:50051")
    parser.add_argument("--namespace", default="payments")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    subscription = policyhub.Subscription(args.server, args.namespace)
    with policyhub.Watcher(subscription) as watcher:
        state = watcher.wait(timeout=args.timeout)
        bodies = {name: bundle.body for name, bundle in state.bundles.items()}
        print(f"revision {state.revision} ({state.source.value}): {json.dumps(bodies)}")


if __name__ == "__main__":
    main()
