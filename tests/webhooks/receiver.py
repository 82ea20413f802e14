"""A webhook receiver for the tests: verifies every delivery with the
reference implementation of Standard Webhooks (`standardwebhooks`) and
parses it with the CloudEvents SDK (`cloudevents`), then prints one JSON
line per request on standard output. The first line is {"port": N}.

Its answers follow a plan given as arguments, one entry per request in
order, the last repeating: `ok` (204), `500`, `hang` (answers after
--hang-seconds, past the sender's timeout), or `slow` (answers 204 after
--hang-seconds). It listens on 127.0.0.1 only and stops when its standard
input closes.
"""

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudevents.core.bindings.http import HTTPMessage, from_http_event
from standardwebhooks.webhooks import Webhook

parser = argparse.ArgumentParser()
parser.add_argument("--secret", required=True)
parser.add_argument("--hang-seconds", type=float, default=5.0)
parser.add_argument("--chat", action="store_true", help="expect chat messages, not CloudEvents")
parser.add_argument("plan", nargs="*", default=["ok"])
arguments = parser.parse_args()

webhook = Webhook(arguments.secret)
lock = threading.Lock()
count = 0


def emit(record):
    with lock:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        global count
        received_at = time.time()
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {key.lower(): value for key, value in self.headers.items()}
        with lock:
            step = arguments.plan[min(count, len(arguments.plan) - 1)]
            count += 1
        record = {
            "received_at": received_at,
            "webhook_id": headers.get("webhook-id"),
            "answer": step,
        }
        try:
            webhook.verify(body, headers)
            record["verified"] = True
        except Exception as error:  # noqa: BLE001 - any failure is a finding
            record["verified"] = False
            record["error"] = repr(error)
        try:
            if arguments.chat:
                record["text"] = json.loads(body)["text"]
            else:
                event = from_http_event(HTTPMessage(headers=headers, body=body))
                record["id"] = event.get_id()
                record["type"] = event.get_type()
                record["source"] = event.get_source()
                record["data"] = event.get_data()
                record["content_type"] = headers.get("content-type")
        except Exception as error:  # noqa: BLE001
            record["parsed"] = False
            record["parse_error"] = repr(error)
        emit(record)
        if step in ("hang", "slow"):
            time.sleep(arguments.hang_seconds)
        status = 500 if step == "500" else 204
        try:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()
        except OSError:
            pass  # the sender gave up waiting

    def log_message(self, *_):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
server.daemon_threads = True
emit({"port": server.server_address[1]})
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.read()
