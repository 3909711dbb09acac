"""One JSON log line per event, so every service's logs parse the same way."""

import json
import sys
import time


def log(service: str, event: str, **fields: object) -> None:
    """Write one structured log line to stdout."""
    record = {"ts": round(time.time(), 3), "service": service, "event": event, **fields}
    sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
    sys.stdout.flush()
