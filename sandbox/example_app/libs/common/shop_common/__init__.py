"""Shared code of the shop services: one health endpoint and one log format everywhere."""

from shop_common.health import serve
from shop_common.logs import log

__all__ = ["log", "serve"]
