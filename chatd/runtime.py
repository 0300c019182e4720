"""
The process around chatd: the garbage collector's settings for a daemon,
and JSON logs for twistd.
"""

from __future__ import annotations

import gc
import sys
from typing import Any, Optional

from twisted.logger import ILogObserver
from twisted.python.components import Componentized

from chatd.logs import json_observer

#: The collector's first threshold while chatd runs (Python's default is
#: 700).  A cluster node holds each message for a round trip to Redis, so at
#: 700 new objects the young generation is collected thousands of times a
#: minute, and what is in flight at each pass climbs to the oldest
#: generation, whose passes then walk every object of every connection
#: (docs/performance.md, "Why chatd is fast").  Most of chatd's objects die by reference counting; this only bounds how
#: much cyclic garbage may wait for a pass.
GC_THRESHOLD = 50_000


class CollectorTuning:
    """
    The garbage collector's settings for a long-running daemon, and back.

    ``start`` freezes what start-up built (modules, classes, the
    configuration: never garbage) so full passes skip it, and raises the
    young generation's threshold; ``stop`` undoes both, for an in-process
    service (the tests) that is started and stopped more than once.
    """

    def __init__(self, threshold: int = GC_THRESHOLD) -> None:
        self.threshold = threshold
        self._saved: Optional[tuple[int, ...]] = None

    def start(self) -> None:
        if self._saved is None:
            self._saved = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(self.threshold, *self._saved[1:])

    def stop(self) -> None:
        if self._saved is not None:
            gc.set_threshold(*self._saved)
            gc.unfreeze()
            self._saved = None


def use_json_logs(application: Any, reactor: Any) -> None:
    """JSON lines on stdout for this twistd application (``--log-format json``)."""
    # twistd takes its log observer from the application, if it has one.
    if isinstance(application, Componentized):
        observer = json_observer(sys.stdout, reactor)
        # Events after the reactor has stopped are written at once.
        reactor.addSystemEventTrigger("after", "shutdown", observer.detach)
        application.setComponent(ILogObserver, observer)
