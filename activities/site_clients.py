"""The shape every HTTP activity class shares: one client per reachable instance of a system, built from ferry.yaml.

A worker serves one site and so holds at most the clients of that site's systems; an activity that names an
instance this worker cannot reach must fail at once with a message that says which task queue to use, rather
than retry against a system it will never reach. Subclasses name the system and say how to build its client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

import httpx

from activities.errors import NOT_CONFIGURED, fatal
from common.config import Endpoint, FerryConfig, Site


class Closable(Protocol):
    """A client owning a connection pool that the worker closes at shutdown."""

    async def aclose(self) -> None: ...


C = TypeVar("C", bound=Closable)
E = TypeVar("E", bound=Endpoint)


class SiteClients(Generic[C, E]):
    """Activities of one system on one worker; `clients` maps an instance ('onprem'/'cloud') to its client.

    Subclasses set `system` (the field of `common.config.Site` holding the endpoint, e.g. "harbor"), `label`
    (the system's name in messages, e.g. "Harbor") and `client_type`, or override `build_client`.
    """

    system: ClassVar[str]
    label: ClassVar[str]
    client_type: ClassVar[Callable[..., Any]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Fail at import, not on the first activity run, when `system` does not name a Site field.
        system = cls.__dict__.get("system")
        if system is not None and system not in Site.model_fields:
            raise TypeError(f"{cls.__name__}.system = {system!r} is not a field of common.config.Site")

    def __init__(self, clients: dict[str, C], poll_seconds: float = 5.0) -> None:
        self.clients = clients
        self.poll_seconds = poll_seconds

    @classmethod
    def build_client(cls, endpoint: E, transport: httpx.AsyncBaseTransport | None, site: str) -> C:
        """The client of `site`'s instance of the system at `endpoint`; `transport` is for tests/stand-ins.

        By default `client_type(endpoint, transport)`; override when the client needs more, such as the site.
        """
        return cls.client_type(endpoint, transport)

    @classmethod
    def from_config(cls, cfg: FerryConfig, site: str, transport: httpx.AsyncBaseTransport | None = None) -> Self:
        """The instance this site's worker can reach (no client if the site does not configure the system)."""
        clients: dict[str, C] = {}
        site_cfg = cfg.sites.get(site)
        endpoint: E | None = getattr(site_cfg, cls.system, None) if site_cfg is not None else None
        if endpoint is not None:
            clients[site] = cls.build_client(endpoint, transport, site)
        return cls(clients, poll_seconds=cfg.timeouts.poll_seconds)

    async def aclose(self) -> None:
        """Close every client (worker shutdown)."""
        for client in self.clients.values():
            await client.aclose()

    def _client(self, instance: str, action: str) -> C:
        """The client of `instance`, or a non-retryable NOT_CONFIGURED error naming the worker to run `action` on."""
        client = self.clients.get(instance)
        if client is None:
            have = ", ".join(sorted(self.clients)) or "none"
            raise fatal(
                f"{action}: {self.label} instance '{instance}' is not configured on this worker (it has: {have}); "
                f"run it on the '{instance}' worker's task queue, with sites.{instance}.{self.system} in ferry.yaml",
                NOT_CONFIGURED,
            )
        return client
