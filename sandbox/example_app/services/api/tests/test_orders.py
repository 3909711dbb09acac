from orders import Order, total


def test_total_sums_amounts():
    assert total([Order("a", "x", 100), Order("b", "y", 250)]) == 350


def test_total_of_nothing_is_zero():
    assert total([]) == 0
