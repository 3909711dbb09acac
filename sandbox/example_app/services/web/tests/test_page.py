from page import render


def test_page_escapes_api_url():
    assert "&lt;x&gt;" in render("<x>")
