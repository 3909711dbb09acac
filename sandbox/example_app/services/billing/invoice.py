"""Invoice arithmetic: net, tax and gross in cents."""

TAX_RATES = {"DE": 19, "FR": 20, "US": 0}


def invoice(net_cents: int, country: str) -> dict[str, int]:
    """Net, tax and gross for a country (unknown countries pay no tax here)."""
    tax = net_cents * TAX_RATES.get(country, 0) // 100
    return {"net_cents": net_cents, "tax_cents": tax, "gross_cents": net_cents + tax}
