"""The Prometheus text format of the worker's counters."""

from __future__ import annotations

import pytest

from worker.metrics import Registry


class TestRender:
    def test_counters_with_and_without_labels(self) -> None:
        registry = Registry()
        plain = registry.counter("rmos_x_total", "Things.\nTwo lines.")
        split = registry.counter("rmos_y_total", "By kind.", ("kind", "code"))
        plain.inc()
        plain.inc(amount=2)
        split.inc("b", "ok")
        split.inc('a"q\\', "E\n")
        assert registry.render() == (
            "# HELP rmos_x_total Things.\\nTwo lines.\n"
            "# TYPE rmos_x_total counter\n"
            "rmos_x_total 3\n"
            "# HELP rmos_y_total By kind.\n"
            "# TYPE rmos_y_total counter\n"
            'rmos_y_total{kind="a\\"q\\\\",code="E\\n"} 1\n'
            'rmos_y_total{kind="b",code="ok"} 1\n'
        )

    def test_labels_must_match(self) -> None:
        counter = Registry().counter("rmos_z_total", "Z.", ("op",))
        with pytest.raises(ValueError, match="takes labels"):
            counter.inc()

    def test_one_name_once(self) -> None:
        registry = Registry()
        registry.counter("rmos_z_total", "Z.")
        with pytest.raises(ValueError, match="twice"):
            registry.counter("rmos_z_total", "Z again.")

    def test_no_samples_yet(self) -> None:
        registry = Registry()
        registry.counter("rmos_a_total", "A.")
        registry.counter("rmos_b_total", "B.", ("code",))
        assert registry.render().splitlines() == [
            "# HELP rmos_a_total A.",
            "# TYPE rmos_a_total counter",
            "rmos_a_total 0",
            "# HELP rmos_b_total B.",
            "# TYPE rmos_b_total counter",
        ]

    def test_gauge_set_and_unset(self) -> None:
        """A gauge goes both ways; before its first value it has no sample at all."""
        registry = Registry()
        lag = registry.gauge("rmos_lag", "Lag.")
        assert registry.render().splitlines() == ["# HELP rmos_lag Lag.", "# TYPE rmos_lag gauge"]
        lag.set(value=7)
        lag.set(value=2.5)
        assert registry.render().splitlines()[-1] == "rmos_lag 2.5"
