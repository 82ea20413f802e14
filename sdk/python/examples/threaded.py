"""The same with the synchronous API, for a service that is not async: the
state in force, read from any thread while a background thread follows.

    python threaded.py --server http://127.0.0.1:50051 --token-file runtime.token

`--token-file` names the file holding the runtime's token (none: no token,
for a server started with `--insecure`). With `https://`, `--ca-file`
names the CA that signed the server's certificate and `--cert-file` with
`--key-file` the client's certificate for mutual TLS (PEM files).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import policyhub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:50051")
    parser.add_argument("--namespace", default="payments")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--token-file", help="the file holding the runtime's bearer token")
    parser.add_argument("--ca-file")
    parser.add_argument("--cert-file")
    parser.add_argument("--key-file")
    args = parser.parse_args()

    def read(path: str | None) -> bytes | None:
        return Path(path).read_bytes() if path else None

    tls = policyhub.Tls(
        ca_certificate=read(args.ca_file),
        client_certificate=read(args.cert_file),
        client_key=read(args.key_file),
    )
    subscription = policyhub.Subscription(
        args.server,
        args.namespace,
        tls=tls,
        token=policyhub.token_file(args.token_file) if args.token_file else None,
        backoff=(0.2, 1.0),
    )
    with policyhub.Watcher(subscription) as watcher:
        state = watcher.wait(timeout=args.timeout)
        bodies = {name: bundle.body for name, bundle in state.bundles.items()}
        print(f"revision {state.revision} ({state.source.value}): {json.dumps(bodies)}")


if __name__ == "__main__":
    main()
