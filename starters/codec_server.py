"""`ferry codec-server`: decrypt Ferry's payloads for the Temporal UI and CLI, without giving them the keys.

With `temporal.encryption` on, the Temporal server stores ciphertext, so the UI and `temporal workflow show`
display opaque `binary/encrypted` blobs. They can call a codec server instead: an HTTP service holding the
keys that answers POST .../encode and POST .../decode with the Temporal codec server protocol (a JSON body
`{"payloads": [...]}`, the proto3 JSON form of `temporal.api.common.v1.Payloads`). The UI calls it from the
browser, so it needs CORS for the UI's origin. Keys are read once at start and never logged; the server
decrypts for anyone who can reach it, so it binds to 127.0.0.1 unless told otherwise: put it behind the
same access control as the UI.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from common.codec import EncryptionCodec, PayloadDecryptionError, codec_for
from common.config import FerryConfig
from starters.common import CommandError

DEFAULT_PORT = 8081

HELP = """Serve POST /encode and POST /decode (also under any prefix, e.g. /{namespace}/decode) with the keys of
temporal.encryption, so the Temporal UI and CLI show Ferry's encrypted payloads decoded.

Point the UI at it:
  - per browser: Temporal UI > the data-encoder icon (top right) > Codec Server endpoint: http://HOST:PORT
  - for everyone: the UI server's codec endpoint (TEMPORAL_CODEC_ENDPOINT=http://HOST:PORT, or `codec:
    endpoint:` in its config); the dev server: `temporal server start-dev --ui-codec-endpoint http://HOST:PORT`
  - Temporal Cloud: the namespace's "Codec Server" setting
The UI calls the endpoint from the browser: --origin must name the URL the UI is opened at (default:
temporal.ui_url of ferry.yaml). The CLI needs no CORS:
  temporal workflow show -w release/shop/<sha12> --codec-endpoint http://HOST:PORT

It decrypts for anyone who can reach it: keep it on 127.0.0.1 (default) or behind the UI's access control.
"""


def build_app(codec: EncryptionCodec, *, origins: Sequence[str], namespace: str | None = None) -> Starlette:
    """The codec server as an ASGI app (served by uvicorn, or called in-process by tests).

    `namespace`: when set, a request whose X-Namespace header names another namespace is refused (403):
    these keys are Ferry's namespace's, and encoding another namespace's input with them would be a mistake.
    """

    async def handle(request: Request) -> Response:
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ("encode", "decode"):
            return PlainTextResponse("not found: POST .../encode or .../decode", status_code=404)
        asked = request.headers.get("x-namespace")
        if namespace and asked and asked != namespace:
            return PlainTextResponse(
                f"this codec server holds the keys of namespace '{namespace}', not '{asked}'", status_code=403
            )
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except json_format.ParseError as e:
            return PlainTextResponse(f"body is not Payloads JSON ({e})", status_code=400)
        fn = codec.encode if action == "encode" else codec.decode
        try:
            result = Payloads(payloads=await fn(payloads.payloads))
        except PayloadDecryptionError as e:
            return PlainTextResponse(str(e), status_code=400)
        return JSONResponse(json_format.MessageToDict(result))

    return Starlette(
        routes=[Route("/{path:path}", handle, methods=["POST"])],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=list(origins),
                allow_methods=["POST"],
                # The UI sends X-Namespace, and Authorization when it passes the user's access token on.
                allow_headers=["Content-Type", "X-Namespace", "Authorization"],
                allow_credentials=True,
                max_age=600,
            )
        ],
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `codec-server` sub-command and its --help."""
    cs = sub.add_parser(
        "codec-server",
        help="decrypt Ferry's encrypted payloads for the Temporal UI and CLI (POST /encode, /decode)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cs.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    cs.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    cs.add_argument(
        "--origin",
        action="append",
        metavar="URL",
        help="UI origin allowed by CORS (repeatable; default: temporal.ui_url)",
    )


def serve(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Read the keys, then serve until interrupted."""
    import uvicorn

    codec = codec_for(cfg.temporal.encryption)
    if codec is None:
        raise CommandError("temporal.encryption has no keys: payloads are not encrypted, so there is nothing to decode")
    origins = [o.rstrip("/") for o in (args.origin or ([cfg.temporal.ui_url] if cfg.temporal.ui_url else []))]
    namespace = os.environ.get("TEMPORAL_NAMESPACE") or cfg.temporal.namespace
    app = build_app(codec, origins=origins, namespace=namespace)
    print(
        f"codec server on http://{args.host}:{args.port} for namespace {namespace} "
        f"(keys: {', '.join(codec.key_ids)}, active {codec.active_key}; CORS: {', '.join(origins) or 'none'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
