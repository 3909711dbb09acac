from invoice import invoice


def test_german_tax():
    assert invoice(1000, "DE") == {"net_cents": 1000, "tax_cents": 190, "gross_cents": 1190}
