"""The shop's web front end: one page and a health endpoint."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from page import render

API_URL = os.environ.get("API_URL", "http://api")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b'{"status": "ok"}' if self.path == "/healthz" else render(API_URL).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
