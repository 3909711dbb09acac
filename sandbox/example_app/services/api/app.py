"""The shop's HTTP API: lists orders (in memory, it is an example)."""

from orders import Order, total
from shop_common import log, serve

ORDERS = [Order("o-1", "alice", 1250), Order("o-2", "bob", 399)]


def list_orders() -> tuple[int, dict]:
    """GET /orders: every order and the sum of their amounts."""
    return 200, {"orders": [o.__dict__ for o in ORDERS], "total_cents": total(ORDERS)}


if __name__ == "__main__":
    log("api", "starting")
    serve("api", {"/orders": list_orders})
