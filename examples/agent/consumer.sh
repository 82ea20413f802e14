#!/bin/sh
# Follows one policy through `policyhub agent`: prints each new version.
# Usage: consumer.sh NAMESPACE NAME  (AGENT defaults to http://127.0.0.1:7070)
set -eu
agent=${AGENT:-http://127.0.0.1:7070}
url="$agent/v1/namespaces/$1/policies/$2"
headers=$(mktemp)
body=$(mktemp)
trap 'rm -f "$headers" "$body"' EXIT
etag=none
while true; do
  status=$(curl -sS -o "$body" -D "$headers" -w '%{http_code}' \
    -H "If-None-Match: $etag" -H 'Prefer: wait=30' "$url")
  case $status in
    200) etag=$(sed -n 's/^[Ee][Tt][Aa][Gg]: *//p' "$headers" | tr -d '\r')
         version=$(sed -n 's/^[Pp]olicyhub-[Vv]ersion: *//p' "$headers" | tr -d '\r')
         echo "version $version $(cat "$body")" ;;
    304) ;;  # unchanged for 30 s: ask again
    *) echo "the agent answered $status: $(cat "$body")" >&2; sleep 1 ;;
  esac
done
