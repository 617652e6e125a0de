"""A webhook receiver for the tests: verifies every request with the standardwebhooks package and
logs it as a JSON line; answers 500 to the first --fail-first attempts of each webhook id, and
holds the first attempt of each id --hold seconds before answering (a slow receiver)."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import standardwebhooks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--hold", type=float, default=0.0)
    args = parser.parse_args()
    verifier = standardwebhooks.Webhook(args.secret)
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                verifier.verify(body, headers)
                verified = True
            except Exception:
                verified = False
            message_id = headers.get("webhook-id", "")
            with lock:
                seen[message_id] += 1
                attempt = seen[message_id]
                status = 500 if attempt <= args.fail_first else 200
                entry = {"id": message_id, "attempt": attempt, "status": status,
                         "verified": verified, "path": self.path, "at": time.time(),
                         "timestamp": headers.get("webhook-timestamp"),
                         "signature": headers.get("webhook-signature"),
                         "body": body.decode()}  # fmt: skip
                with open(args.log, "a") as log:
                    log.write(json.dumps(entry) + "\n")
            if attempt == 1 and args.hold:
                time.sleep(args.hold)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *values: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
