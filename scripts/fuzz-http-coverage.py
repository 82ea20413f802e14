#!/usr/bin/env python3
"""How many operations of the OpenAPI document a schemathesis run got a
success from, read from the HAR files of its stateful passes.

  fuzz-http-coverage.py DOCUMENT HAR... [--floor N]

DOCUMENT is the OpenAPI document (a file or an http URL); each HAR is a file
`schemathesis run --report-har-path` wrote. Each request is matched to the
operation whose method and path template it fits; an operation is reached
when one of its requests got a 2xx. Prints `reached N of M operations`, then
the operations not reached, each with the status codes they got; exit 1 when
N is under the floor.
"""

import argparse
import collections
import json
import re
import sys
import urllib.parse
import urllib.request


def load_document(source):
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source) as response:
            return json.load(response)
    with open(source) as file:
        return json.load(file)


def operation_matchers(document):
    """(method, compiled path pattern, operationId) for each operation, the
    paths with fewer parameters first and, among those, the longer literal
    text first: a literal segment (`active:watch`) or verb (`{name}:diff`)
    wins over a parameter that would also take it."""
    matchers = []
    for path, operations in document["paths"].items():
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part)
            for part in re.split(r"(\{[^}]+\})", path)
        )
        for method, operation in operations.items():
            if isinstance(operation, dict) and "operationId" in operation:
                literal = len(re.sub(r"\{[^}]+\}", "", path))
                matchers.append(
                    ((path.count("{"), -literal), method.upper(), re.compile(pattern + "$"), operation["operationId"])
                )
    matchers.sort(key=lambda matcher: matcher[0])
    return [matcher[1:] for matcher in matchers]


def operation_of(matchers, method, url):
    path = urllib.parse.urlparse(url).path
    for expected, pattern, operation in matchers:
        if expected == method and pattern.match(path):
            return operation
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("document")
    parser.add_argument("har", nargs="+")
    parser.add_argument("--floor", type=int, default=0)
    arguments = parser.parse_args()

    document = load_document(arguments.document)
    matchers = operation_matchers(document)
    statuses = collections.defaultdict(collections.Counter)
    for har in arguments.har:
        with open(har) as file:
            entries = json.load(file)["log"]["entries"]
        for entry in entries:
            operation = operation_of(matchers, entry["request"]["method"], entry["request"]["url"])
            if operation is not None:
                statuses[operation][entry["response"]["status"]] += 1

    everything = sorted(operation for _, _, operation in matchers)
    reached = [op for op in everything if any(200 <= code < 300 for code in statuses[op])]
    print(f"stateful phase: reached {len(reached)} of {len(everything)} operations")
    for operation in everything:
        if operation not in reached:
            got = ", ".join(f"{code}×{count}" for code, count in sorted(statuses[operation].items()))
            print(f"  not reached: {operation} ({got or 'never called'})")
    if len(reached) < arguments.floor:
        print(f"under the floor of {arguments.floor}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
