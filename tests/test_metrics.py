"""The hot-path counters: the same exposition as prometheus_client's own."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from chatd.metrics import Metrics, Total


def test_a_total_is_exposed_as_prometheus_clients_counter_is() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("chatd_things", "Things that happened.", registry=theirs)
    created = theirs.get_sample_value("chatd_things_created")
    assert created is not None
    total = Total("chatd_things", "Things that happened.", ours, created)
    for amount in (1, 2.5, 40):
        counter.inc(amount)
        total.inc(amount)
    assert generate_latest(ours) == generate_latest(theirs)
    assert ours.get_sample_value("chatd_things_total") == 43.5


def test_a_total_only_goes_up() -> None:
    total = Total("chatd_things", "Things that happened.", CollectorRegistry(), 0.0)
    with pytest.raises(ValueError):
        total.inc(-1)
    assert total.value == 0


def test_every_metric_is_in_the_registry_once() -> None:
    text = generate_latest(Metrics(wall_clock=lambda: 1_764_142_000.0).registry).decode()
    for name in ("chatd_messages_received", "chatd_deliveries", "chatd_received_bytes", "chatd_sent_bytes"):
        assert text.count(f"# TYPE {name}_total counter") == 1
        assert f"{name}_created 1.764142e+09" in text
