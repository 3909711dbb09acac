"""A webhook receiver for the sandbox and the tests: accepts Slack-compatible JSON, keeps what it got.

`POST /hooks/{token}` stores a message (a redelivery with the same Idempotency-Key is stored once);
`GET /_sandbox/messages` lists them. `python -m sandbox.receiver --port N` serves it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def build_receiver() -> Starlette:
    """The receiver app; its state lives in the app (`app.state.messages`)."""
    messages: list[dict[str, Any]] = []
    keys: set[str] = set()

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid_payload"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return JSONResponse({"error": "no_text"}, status_code=400)
        key = request.headers.get("Idempotency-Key", "")
        if not key or key not in keys:
            keys.add(key)
            messages.append({"path": request.url.path, "key": key, **body})
        return JSONResponse({"ok": True})

    async def listing(_: Request) -> JSONResponse:
        return JSONResponse(messages)

    app = Starlette(routes=[Route("/hooks/{token}", receive, methods=["POST"]), Route("/_sandbox/messages", listing)])
    app.state.messages = messages
    return app


def main() -> None:
    """Serve the receiver on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Sandbox webhook receiver (Slack-compatible).")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    config = uvicorn.Config(build_receiver(), host="127.0.0.1", port=args.port, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
