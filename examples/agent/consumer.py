#!/usr/bin/env python3
"""Follows one policy through `policyhub agent`: prints each new version.

Usage: consumer.py NAMESPACE NAME  (AGENT defaults to http://127.0.0.1:7070)
"""
import json, os, sys, urllib.error, urllib.request

agent = os.environ.get("AGENT", "http://127.0.0.1:7070")
url = f"{agent}/v1/namespaces/{sys.argv[1]}/policies/{sys.argv[2]}"
etag = None
while True:
    request = urllib.request.Request(url, headers={"Prefer": "wait=30"})
    if etag:
        request.add_header("If-None-Match", etag)
    try:
        with urllib.request.urlopen(request, timeout=40) as response:
            etag, body = response.headers["ETag"], json.load(response)
            print("version", response.headers["Policyhub-Version"], json.dumps(body), flush=True)
    except urllib.error.HTTPError as error:
        if error.code != 304:  # 304: unchanged for 30 s, ask again
            raise
