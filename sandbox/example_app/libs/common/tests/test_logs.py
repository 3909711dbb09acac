import json

from shop_common.logs import log


def test_log_writes_one_json_line(capsys):
    log("api", "started", port=8080)
    record = json.loads(capsys.readouterr().out)
    assert record["service"] == "api" and record["event"] == "started" and record["port"] == 8080
