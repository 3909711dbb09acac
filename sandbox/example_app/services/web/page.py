"""The one HTML page of the shop."""

from html import escape


def render(api_url: str) -> str:
    """The page, pointing its script at the API."""
    return f"<!doctype html><title>shop</title><h1>Shop</h1><p data-api='{escape(api_url)}'>Orders</p>"
