"""Orders and their arithmetic, kept apart from HTTP so they are easy to test."""

from dataclasses import dataclass


@dataclass
class Order:
    id: str
    customer: str
    amount_cents: int


def total(orders: list[Order]) -> int:
    """The sum of the orders' amounts, in cents."""
    return sum(o.amount_cents for o in orders)
