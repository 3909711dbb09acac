"""Background worker: takes jobs and reports how many it did on /metrics."""

import threading
import time

from jobs import JobCounter
from shop_common import log, serve

COUNTER = JobCounter()


def work_forever(interval: float = 5.0) -> None:
    """Process a (pretend) job every `interval` seconds."""
    while True:
        COUNTER.done("noop")
        time.sleep(interval)


if __name__ == "__main__":
    log("worker", "starting")
    threading.Thread(target=work_forever, daemon=True).start()
    serve("worker", {"/metrics": lambda: (200, COUNTER.snapshot())}, port=9090)
