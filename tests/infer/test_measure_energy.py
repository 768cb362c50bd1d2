"""Energy counters (kecil.infer.measure): RAPL read from a powercap tree written to a temporary
folder (the reader's root is a parameter: real files, read as the kernel's are), the arithmetic
across a counter's wrap, and on this machine, which has no readable counter, None and a plain
reason rather than a 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from kecil.infer.measure import EnergyMeter, counter_rise, energy_unreadable_reason, rapl_counters

RANGE = 262_143_328_850  # a real package's max_energy_range_uj


def zone(root: Path, name: str, label: str, energy: int, limit: int = RANGE) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "name").write_text(label + "\n")
    (folder / "energy_uj").write_text(f"{energy}\n")
    (folder / "max_energy_range_uj").write_text(f"{limit}\n")
    return folder


def set_energy(folder: Path, energy: int) -> None:
    (folder / "energy_uj").write_text(f"{energy}\n")


@pytest.fixture
def powercap(tmp_path):
    """Two packages, a core sub-zone of the first and a psys zone: only the packages count."""
    root = tmp_path / "powercap"
    zone(root, "intel-rapl:0", "package-0", 1_000_000)
    zone(root, "intel-rapl:0:0", "core", 700_000)
    zone(root, "intel-rapl:1", "package-1", 5_000_000)
    zone(root, "intel-rapl:2", "psys", 9_000_000)
    return root


def test_the_packages_are_read_and_their_sub_zones_and_psys_are_not(powercap):
    counters = rapl_counters(powercap)
    assert [(c.name, c.microjoules, c.wraps_at) for c in counters] == [
        ("RAPL package-0", 1_000_000, RANGE), ("RAPL package-1", 5_000_000, RANGE)]
    assert energy_unreadable_reason(powercap, gpu=False) is None


def test_the_meter_sums_the_rise_of_every_package(powercap):
    meter = EnergyMeter(powercap, gpu=False)
    assert meter.readable and meter.sources == "RAPL package-0 + RAPL package-1"
    set_energy(powercap / "intel-rapl:0", 3_500_000)  # +2.5 J
    set_energy(powercap / "intel-rapl:0:0", 99_000_000)  # inside package-0: not added again
    set_energy(powercap / "intel-rapl:1", 5_250_000)  # +0.25 J
    assert meter.joules() == pytest.approx(2.75)
    set_energy(powercap / "intel-rapl:1", 6_250_000)  # +1 J more, read later
    assert meter.joules() == pytest.approx(3.75)


def test_a_wrapped_counter_counts_from_its_range(powercap):
    package = zone(powercap, "intel-rapl:0", "package-0", RANGE - 400_000)
    meter = EnergyMeter(powercap, gpu=False)
    set_energy(package, 600_000)  # past the range and round: 0.4 J to the top, 0.6 J after
    assert meter.joules() == pytest.approx(1.0)
    set_energy(package, 2_600_000)
    assert meter.joules() == pytest.approx(3.0)  # and on from the wrapped value
    assert counter_rise(RANGE - 1, 5, RANGE) == 6
    assert counter_rise(10, 4, None) is None  # a counter that never wraps went down: reset, unknown


def test_a_counter_that_stops_being_readable_gives_none_not_a_partial_sum(powercap):
    meter = EnergyMeter(powercap, gpu=False)
    (powercap / "intel-rapl:1" / "energy_uj").unlink()
    assert meter.joules() is None
    set_energy(powercap / "intel-rapl:1", 9_000_000)
    assert meter.joules() is None  # once broken, the span it covers is unknown for good


def test_one_unreadable_package_makes_the_whole_reading_unreadable(powercap):
    (powercap / "intel-rapl:1" / "energy_uj").write_text("not a number\n")
    assert rapl_counters(powercap) == []
    reason = energy_unreadable_reason(powercap, gpu=False)
    assert reason.startswith("not readable here: ") and "intel-rapl:" in reason and "root only" in reason
    assert EnergyMeter(powercap, gpu=False).joules() is None


def test_an_empty_tree_and_this_machine_say_not_readable_here(tmp_path):
    meter = EnergyMeter(tmp_path / "nothing", gpu=False)
    assert not meter.readable and meter.joules() is None and meter.sources is None
    assert energy_unreadable_reason(tmp_path / "nothing", gpu=False).startswith("not readable here: no CPU energy counters")
    if rapl_counters():  # a machine whose counters are readable (root on bare metal): a real reading
        assert energy_unreadable_reason() is None and EnergyMeter().joules() >= 0
    else:  # this development machine
        assert energy_unreadable_reason().startswith("not readable here")
        assert EnergyMeter().joules() is None
