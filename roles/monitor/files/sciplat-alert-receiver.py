#!/usr/bin/python3
"""Test webhook receiver for Alertmanager (sciplat test bed; role monitor).

POST: appends the notification (Alertmanager's webhook JSON) with the time it
arrived to a JSON-lines file. GET: returns every recorded notification as a
JSON list, oldest first. Standard library only; listens on loopback.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOCK = threading.Lock()
MAX_BODY = 4 * 1024 * 1024


def make_handler(store: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._reply(400, {"error": "expected a JSON body up to 4 MiB"})
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError as err:
                self._reply(400, {"error": f"not JSON: {err}"})
                return
            record = {"received_at": time.time(), "path": self.path, "payload": payload}
            with LOCK, store.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record, sort_keys=True) + "\n")
            self._reply(200, {"ok": True})

        def do_GET(self) -> None:
            records = []
            with LOCK:
                if store.exists():
                    for line in store.read_text(encoding="utf-8").splitlines():
                        if line.strip():
                            records.append(json.loads(line))
            self._reply(200, records)

        def log_message(self, format: str, *args: object) -> None:
            print(f"{self.address_string()} {format % args}", flush=True)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args()
    args.file.parent.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((args.listen, args.port), make_handler(args.file))
    server.serve_forever()


if __name__ == "__main__":
    main()
