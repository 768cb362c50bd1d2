"""The server's energy counter on /metrics: joules from the machine's counters where readable
(a powercap tree in a temporary folder, real files), and no series at all where not."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

from kecil.infer.measure import EnergyMeter, energy_unreadable_reason
from kecil.serve.metrics import EnergyCollector


def scrape(meter: EnergyMeter) -> str:
    registry = CollectorRegistry()
    registry.register(EnergyCollector(meter))
    return generate_latest(registry).decode()


def test_the_energy_counter_counts_joules_since_the_server_started(tmp_path):
    package = tmp_path / "intel-rapl:0"
    package.mkdir()
    (package / "name").write_text("package-0\n")
    (package / "max_energy_range_uj").write_text("1000000000\n")
    (package / "energy_uj").write_text("999000000\n")
    meter = EnergyMeter(tmp_path, gpu=False)
    assert "kecil_energy_joules_total 0.0" in scrape(meter)
    (package / "energy_uj").write_text("4000000\n")  # wrapped: 1 J to the top, then 4 J
    text = scrape(meter)
    assert re.search(r"^# TYPE kecil_energy_joules(_total)? counter$", text, re.M) and "kecil_energy_joules_total 5.0" in text
    assert "RAPL package-0" in text


def test_no_readable_counter_means_no_series_not_a_zero(tmp_path):
    assert "kecil_energy_joules" not in scrape(EnergyMeter(tmp_path / "none", gpu=False))
    if energy_unreadable_reason() is not None:  # this development machine
        assert "kecil_energy_joules" not in scrape(EnergyMeter())
