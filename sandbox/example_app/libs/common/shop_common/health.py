"""A tiny HTTP server with /healthz, shared so that every service answers probes the same way."""

import json
import os
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[], tuple[int, dict]]


def serve(service: str, routes: dict[str, Route] | None = None, port: int | None = None) -> None:
    """Serve `routes` (path -> handler returning status and JSON body) plus /healthz until killed."""
    table: dict[str, Route] = {"/healthz": lambda: (200, {"status": "ok", "service": service})}
    table.update(routes or {})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            route = table.get(self.path.split("?")[0])
            status, body = route() if route else (404, {"error": "not found"})
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("", port or int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
