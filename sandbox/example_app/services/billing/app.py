"""Billing: computes invoices with tax; no shared library, so it releases on its own changes only."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from invoice import invoice


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = {"status": "ok"} if self.path == "/healthz" else invoice(1000, "DE")
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
