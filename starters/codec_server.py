"""`ferry codec-server`: decrypt Ferry's payloads for the Temporal UI and CLI, without giving them the keys.

With `temporal.encryption` on, the Temporal server stores ciphertext, so the UI and `temporal workflow show`
display opaque `binary/encrypted` blobs. They can call a codec server instead: an HTTP service holding the
keys that answers POST .../encode and POST .../decode with the Temporal codec server protocol (a JSON body
`{"payloads": [...]}`, the proto3 JSON form of `temporal.api.common.v1.Payloads`). The UI calls it from the
browser, so it needs CORS for the UI's origin. Keys are read once at start and never logged.

The server decrypts for whoever it answers, so it wants a bearer token (temporal.encryption.codec_server.token);
without one it binds only to a loopback address. It refuses /encode unless told otherwise: whoever can encode
can craft payloads Ferry's workers will decrypt and trust, such as a forged approval signal.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence

from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from common.codec import EncryptionCodec, PayloadDecryptionError, codec_for
from common.config import ConfigError, FerryConfig
from starters.common import USAGE, CommandError
from workflows.approval_types import PLAINTEXT_MARK

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
  temporal workflow show -w release/shop/<sha12> --codec-endpoint http://HOST:PORT [--codec-auth "Bearer TOKEN"]

Access: it decrypts every payload for whoever it answers.
  - With a token (ferry.yaml temporal.encryption.codec_server.token: {env: VAR} or {file: PATH}, read at
    each request so a rotated file takes effect), every request needs `Authorization: Bearer <token>`, else
    401. The CLI sends it with --codec-auth "Bearer <token>" (or TEMPORAL_CODEC_AUTH). The UI sends an
    Authorization header with its codec "pass the user access token" option (TEMPORAL_CODEC_PASS_ACCESS_TOKEN):
    that is the signed-in user's access token, not this one, so for a shared UI let the authenticating proxy
    in front of the UI and this server set the header. CORS preflights (OPTIONS) are answered without it, and
    Authorization is an allowed header. The token travels in clear over http: off this machine, put TLS in front.
  - Without a token, it binds only to a loopback address (--host 127.0.0.1, ::1 or localhost; any other is
    refused) and warns that anyone on this machine can decrypt payloads.
/encode answers 403 unless codec_server.allow_encode: true or --allow-encode: an encode endpoint lets anyone
holding UI access craft encrypted payloads the workers accept as Ferry's own (e.g. forged approval signals).
Decoding is all the UI needs to show histories.
"""


def build_app(
    codec: EncryptionCodec,
    *,
    origins: Sequence[str],
    namespace: str | None = None,
    token: Callable[[], str] | None = None,
    allow_encode: bool = False,
) -> Starlette:
    """The codec server as an ASGI app (served by uvicorn, or called in-process by tests).

    `namespace`: when set, a request whose X-Namespace header names another namespace is refused (403):
    these keys are Ferry's namespace's, and encoding another namespace's input with them would be a mistake.
    `token`: when set, returns the bearer token every request must carry (called per request, so a rotated
    secret takes effect); `allow_encode`: serve /encode too (else 403).
    """

    def refused(request: Request) -> Response | None:
        if token is None:
            return None
        try:
            expected = token()
        except ConfigError as e:
            print(f"ferry codec-server: {e}", file=sys.stderr, flush=True)
            expected = ""
        if not expected:
            return PlainTextResponse("the codec server cannot read its token; see its log", status_code=500)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
            return None
        return PlainTextResponse(
            "send Authorization: Bearer <token> (the token of temporal.encryption.codec_server.token)",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="ferry codec server"'},
        )

    async def handle(request: Request) -> Response:
        if (denied := refused(request)) is not None:
            return denied
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if action not in ("encode", "decode"):
            return PlainTextResponse("not found: POST .../encode or .../decode", status_code=404)
        asked = request.headers.get("x-namespace")
        if namespace and asked and asked != namespace:
            return PlainTextResponse(
                f"this codec server holds the keys of namespace '{namespace}', not '{asked}'", status_code=403
            )
        if action == "encode" and not allow_encode:
            return PlainTextResponse(
                "encoding is off: it would let whoever reaches this server craft encrypted payloads (e.g. a forged "
                "approval signal); start it with --allow-encode or temporal.encryption.codec_server.allow_encode",
                status_code=403,
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
        for payload in result.payloads:
            # The workers' plaintext mark is for workflows, not people: the UI shows a payload as it was sent.
            if PLAINTEXT_MARK in payload.metadata:
                del payload.metadata[PLAINTEXT_MARK]
        return JSONResponse(json_format.MessageToDict(result))

    return Starlette(
        routes=[Route("/{path:path}", handle, methods=["POST"])],
        middleware=[
            # Outside the token check: preflights (no Authorization) are answered, and a 401 carries CORS headers
            # so the UI can show it.
            Middleware(
                CORSMiddleware,
                allow_origins=list(origins),
                allow_methods=["POST"],
                # The UI sends X-Namespace, and Authorization when it passes an access token on.
                allow_headers=["Content-Type", "X-Namespace", "Authorization"],
                allow_credentials=True,
                max_age=600,
            )
        ],
    )


def is_loopback(host: str) -> bool:
    """True when binding `host` keeps the server reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `codec-server` sub-command and its --help."""
    cs = sub.add_parser(
        "codec-server",
        help="decrypt Ferry's encrypted payloads for the Temporal UI and CLI (POST /encode, /decode)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cs.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    cs.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only); a non-loopback address needs "
        "temporal.encryption.codec_server.token",
    )
    cs.add_argument(
        "--origin",
        action="append",
        metavar="URL",
        help="UI origin allowed by CORS (repeatable; default: temporal.ui_url)",
    )
    cs.add_argument(
        "--allow-encode",
        action="store_true",
        help="also serve POST /encode (as codec_server.allow_encode: true): anyone with UI access could then "
        "craft encrypted payloads such as forged approval signals",
    )


def serve(cfg: FerryConfig, args: argparse.Namespace) -> int:
    """Read the keys and the token, check where it may bind, then serve until interrupted."""
    import uvicorn

    codec = codec_for(cfg.temporal.encryption)
    if codec is None:
        raise CommandError("temporal.encryption has no keys: payloads are not encrypted, so there is nothing to decode")
    settings = cfg.temporal.encryption.codec_server
    if settings.token is not None:
        if not settings.token.read():  # fail now, not at the first request; ConfigError names the reference
            raise CommandError(f"temporal.encryption.codec_server.token: {settings.token.describe()} is empty")
    elif not is_loopback(args.host):
        raise CommandError(
            f"--host {args.host}: without temporal.encryption.codec_server.token the codec server decrypts for "
            "anyone who reaches it, so it binds only to loopback (127.0.0.1, ::1); set a token to serve the network",
            USAGE,
        )
    else:
        print(
            "ferry codec-server: warning: no temporal.encryption.codec_server.token: anyone on this machine can "
            "decrypt payloads through it",
            file=sys.stderr,
            flush=True,
        )
    allow_encode = settings.allow_encode or args.allow_encode
    origins = [o.rstrip("/") for o in (args.origin or ([cfg.temporal.ui_url] if cfg.temporal.ui_url else []))]
    namespace = os.environ.get("TEMPORAL_NAMESPACE") or cfg.temporal.namespace
    app = build_app(
        codec,
        origins=origins,
        namespace=namespace,
        token=settings.token.read if settings.token is not None else None,
        allow_encode=allow_encode,
    )
    print(
        f"codec server on http://{args.host}:{args.port} for namespace {namespace} "
        f"(keys: {', '.join(codec.key_ids)}, active {codec.active_key}; CORS: {', '.join(origins) or 'none'}; "
        f"token: {settings.token.describe() if settings.token else 'none'}; "
        f"/encode: {'on' if allow_encode else 'off'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
