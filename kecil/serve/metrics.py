"""Prometheus metrics of one server: requests, tokens in and out, latency, time to first token,
and — read live at each scrape — queue depth, running sequences, loaded models and, where the
machine's energy counters are readable (kecil/infer/measure.py), the joules used since the server
started: rate(kecil_energy_joules_total) / rate(kecil_completion_tokens_total) is joules per
generated token. Where none is readable the series is absent, never 0."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from kecil.infer.measure import EnergyMeter

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class Metrics:
    def __init__(self, pool, energy: EnergyMeter | None = None):
        import prometheus_client

        prometheus_client.disable_created_metrics()  # *_created series only add noise to every scrape
        self.registry = CollectorRegistry()
        self.requests = Counter("kecil_requests", "Requests answered, by endpoint, model and HTTP status.",
                                ["endpoint", "model", "status"], registry=self.registry)
        self.prompt_tokens = Counter("kecil_prompt_tokens", "Prompt tokens processed.", ["model"], registry=self.registry)
        self.completion_tokens = Counter("kecil_completion_tokens", "Tokens generated.", ["model"], registry=self.registry)
        self.latency = Histogram("kecil_request_duration_seconds", "Time from request to last byte.",
                                 ["endpoint", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("kecil_time_to_first_token_seconds", "Time from request to the first generated token.",
                              ["model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.registry.register(_PoolCollector(pool))
        self.registry.register(EnergyCollector(energy or EnergyMeter()))


class _PoolCollector:
    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        queued = GaugeMetricFamily("kecil_queue_depth", "Requests waiting for a decode slot.", labels=["model"])
        running = GaugeMetricFamily("kecil_running_sequences", "Sequences being generated now.", labels=["model"])
        memory = GaugeMetricFamily("kecil_model_memory_bytes", "Estimated memory of each loaded model.", labels=["model"])
        for loaded in self.pool.loaded():
            active, waiting = loaded.engine.load
            queued.add_metric([loaded.name], waiting)
            running.add_metric([loaded.name], active)
            memory.add_metric([loaded.name], loaded.memory_bytes)
        yield queued
        yield running
        yield memory
        yield GaugeMetricFamily("kecil_models_loaded", "Models loaded now.", value=len(self.pool.loaded()))


class EnergyCollector:
    """kecil_energy_joules_total, read from the meter at each scrape (which also carries it across
    RAPL's wraps, as long as scrapes come more often than once an hour); absent where unreadable."""

    def __init__(self, meter: EnergyMeter):
        self.meter = meter

    def collect(self):
        joules = self.meter.joules()
        if joules is None:
            return
        family = CounterMetricFamily("kecil_energy_joules", f"Energy used since the server started ({self.meter.sources}); "
                                     "each counter covers its whole device, other processes included.")
        family.add_metric([], joules)
        yield family
