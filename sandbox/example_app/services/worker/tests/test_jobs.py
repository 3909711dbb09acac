from jobs import JobCounter


def test_counts_per_kind():
    c = JobCounter()
    c.done("a")
    c.done("a")
    c.done("b")
    assert c.snapshot() == {"a": 2, "b": 1}
