"""Assemble the stand-in ASGI apps around one World, and serve them over real HTTP with uvicorn.

Each app is wrapped the same way: advance the world's clock, answer the sandbox-only inspection path
(`GET /_sandbox/state`, never faulted nor authenticated), inject the scenario's faults, check the token,
then hand the request to the stand-in's own Starlette app.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox.standins import argocd, buildkite, harbor, kube, rancher, sonarqube, tekton
from sandbox.standins.faults import FaultInjector
from sandbox.standins.world import NAMES, World

INSPECT_PREFIX = "/_sandbox/"


class TokenAuth:
    """Require the stand-in's token when one is configured; any request passes otherwise.

    Schemes: "basic" (Harbor: the token is the password, any user name), "bearer", and
    "bearer-or-token-login" (SonarQube: bearer, or basic with the token as login and an empty password).
    """

    def __init__(
        self,
        app: ASGIApp,
        name: str,
        world: World,
        scheme: str,
        public_paths: frozenset[str],
        unauthorized: Callable[[], Response],
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.name = name
        self.world = world
        self.scheme = scheme
        self.public_paths = public_paths
        self.unauthorized = unauthorized
        self.public_prefixes = public_prefixes

    def _accepts(self, header: str, token: str) -> bool:
        kind, _, value = header.partition(" ")
        kind = kind.lower()
        if kind == "bearer" and self.scheme != "basic":
            return hmac.compare_digest(value.strip().encode(), token.encode())
        if kind == "basic" and self.scheme != "bearer":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return False
            given = password if self.scheme == "basic" else (user if not password else "")
            return hmac.compare_digest(given.encode(), token.encode())
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = self.world.tokens.get(self.name)
        path = scope.get("path", "")
        if scope["type"] != "http" or not token or path in self.public_paths or path.startswith(self.public_prefixes):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        if not self._accepts(header, token):
            response = self.unauthorized()
            if self.scheme == "basic":
                response.headers["WWW-Authenticate"] = 'Basic realm="harbor"'
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class StandIn:
    """One stand-in as served: clock tick, inspection path, faults, auth, then the app itself."""

    def __init__(self, name: str, world: World, app: ASGIApp, module: Any) -> None:
        self.name = name
        self.world = world
        auth = TokenAuth(
            app,
            name,
            world,
            module.AUTH_SCHEME,
            module.PUBLIC_PATHS,
            module.unauthorized,
            getattr(module, "PUBLIC_PREFIXES", ()),
        )
        self.app = FaultInjector(auth, name, world)
        self.inner = app  # its own /_sandbox/ routes (e.g. Buildkite's users and block steps): no faults, no auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.world.tick()
            if scope["path"].startswith(INSPECT_PREFIX):
                await self._inspect(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _inspect(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != INSPECT_PREFIX + "state":
            await self.inner(scope, receive, send)  # a stand-in without such routes answers 404 itself
            return
        if scope["method"] != "GET":
            response: Response = JSONResponse({"error": "only GET /_sandbox/state exists"}, status_code=404)
        else:
            state = {"standin": self.name, **self.world.snapshot()}
            response = Response(json.dumps(state, default=str), media_type="application/json")
        await response(scope, receive, send)


def build_apps(world: World) -> dict[str, ASGIApp]:
    """The stand-ins sharing `world`, keyed by stand-in name."""
    inner: dict[str, tuple[ASGIApp, Any]] = {
        "harbor-onprem": (harbor.build_app(world, "onprem"), harbor),
        "harbor-cloud": (harbor.build_app(world, "cloud"), harbor),
        "argocd-onprem": (argocd.build_app(world, "onprem"), argocd),
        "argocd-cloud": (argocd.build_app(world, "cloud"), argocd),
        "sonarqube": (sonarqube.build_app(world), sonarqube),
        "tekton": (tekton.build_app(world), tekton),
        "buildkite": (buildkite.build_app(world), buildkite),
        "rancher": (rancher.build_app(world), rancher),
        "kube": (kube.build_app(world), kube),
    }
    assert tuple(inner) == NAMES
    return {name: StandIn(name, world, app, module) for name, (app, module) in inner.items()}


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the caller (several run in one event loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """No signal handlers: the caller owns SIGINT/SIGTERM and cancels serve()."""
        yield


def _listen(host: str, port: int, name: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"{name}: cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(
    apps: Mapping[str, ASGIApp],
    ports: Mapping[str, int],
    host: str = "127.0.0.1",
    *,
    on_ready: Callable[[dict[str, int]], None] | None = None,
) -> None:
    """Serve `apps[name]` on `host:ports[name]` for every name in `ports` until cancelled.

    Port 0 picks a free port; `on_ready` receives the actual ports once every server listens. The Harbor
    stand-ins' registry hosts default to the address they are served on (see World.set_registry_host).
    """
    unknown = set(ports) - set(apps)
    if unknown:
        raise ValueError(f"no stand-in named {sorted(unknown)}; names are {', '.join(apps)}")
    sockets: dict[str, socket.socket] = {}
    try:
        for name, port in ports.items():
            sockets[name] = _listen(host, port, name)
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    actual = {name: sock.getsockname()[1] for name, sock in sockets.items()}
    advertised = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    for name, app in apps.items():
        if isinstance(app, StandIn) and name.startswith("harbor-") and name in actual:
            site = name.removeprefix("harbor-")
            if site not in app.world.registry_hosts:
                app.world.set_registry_host(site, f"{advertised}:{actual[name]}")

    servers = {
        name: _Server(
            uvicorn.Config(
                apps[name], lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=1
            )
        )
        for name in sockets
    }
    tasks = {name: asyncio.create_task(s.serve(sockets=[sockets[name]])) for name, s in servers.items()}
    try:
        while not all(s.started for s in servers.values()):
            for name, task in tasks.items():
                if task.done():
                    raise RuntimeError(f"{name}: server stopped while starting: {task.exception()!r}")
            await asyncio.sleep(0.01)
        if on_ready is not None:
            on_ready(actual)
        # asyncio.wait (not gather) so that cancelling serve() does not cancel the servers mid-request:
        # they are told to exit below and shut down gracefully.
        await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        for name, task in tasks.items():
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"{name}: server failed: {task.exception()!r}")
    finally:
        for s in servers.values():
            s.should_exit = True
        await asyncio.wait(tasks.values(), timeout=5)
        for sock in sockets.values():
            sock.close()
