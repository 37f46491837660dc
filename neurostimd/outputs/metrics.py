"""Optional Prometheus endpoint, bound to loopback: per-stage latency histograms, drops, overruns, state and the
applied parameters. Uses its own registry so tests and several daemons in one process do not collide.
`MetricsListener` updates it after every tick of the loop."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from neurostimd.listeners import BaseListener, LoopView, TickStats

STAGES = ("audit", "ingest", "features", "inference", "checks", "policy_safety", "driver")
# Buckets in seconds, dense below 2 ms where the loop lives.
_BUCKETS = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 1.5e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram("neurostimd_stage_seconds", "Per-tick latency of each loop stage",
                                       ["stage"], buckets=_BUCKETS, registry=r)
        self.sample_age_seconds = Histogram("neurostimd_sample_age_seconds",
                                            "Age of the newest sample at each tick", buckets=_BUCKETS, registry=r)
        self.ticks = Counter("neurostimd_ticks", "Loop ticks", registry=r)
        self.overruns = Counter("neurostimd_overruns", "Ticks that missed their deadline", registry=r)
        self.samples = Counter("neurostimd_samples", "Samples ingested", registry=r)
        self.gaps = Gauge("neurostimd_sample_gaps", "Gaps seen in the source's sample counter", registry=r)
        self.bad_frames = Gauge("neurostimd_bad_frames", "Frames from the board rejected by the codec", registry=r)
        self.faults = Counter("neurostimd_faults", "Safety faults raised, by cause", ["kind"], registry=r)
        self.ring_overruns = Gauge("neurostimd_ring_overrun_samples",
                                   "Samples overwritten in the ring before the loop read them", registry=r)
        self.blocks_dropped = Gauge("neurostimd_driver_blocks_dropped",
                                    "Sample blocks the driver dropped (queue full, duplicates)", registry=r)
        self.state = Gauge("neurostimd_state", "Classified state (-1 none)", registry=r)
        self.confidence = Gauge("neurostimd_confidence", "Classifier confidence", registry=r)
        self.stimulating = Gauge("neurostimd_stimulating", "1 while stimulation is applied", registry=r)
        self.applied = Gauge("neurostimd_applied", "Applied stimulation parameter", ["param"], registry=r)
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class MetricsListener(BaseListener):
    """Metrics as a loop listener: each tick's stage times, sample age and counts, the ring's and the driver's
    counters, the faults raised since the last tick, the state and the applied parameters. `close()` stops the
    endpoint."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._faults_exported: dict[str, int] = {}

    def on_tick(self, stats: TickStats, loop: LoopView) -> None:
        m = self.metrics
        for k, v in stats.stages_ms.items():
            m.stage_seconds.labels(stage=k).observe(v / 1000.0)
        if stats.sample_age_ms is not None and stats.sample_age_ms != float("inf"):
            m.sample_age_seconds.observe(stats.sample_age_ms / 1000.0)
        m.ticks.inc()
        if stats.overrun_ticks:
            m.overruns.inc(stats.overrun_ticks)
        m.samples.inc(stats.new_samples)
        m.gaps.set(loop.ring.gaps)
        m.ring_overruns.set(loop.ring.counters.overrun_samples)
        state = loop.state
        for cause, n in state.fault_counts.items():
            seen = self._faults_exported.get(cause, 0)
            if n > seen:
                m.faults.labels(kind=cause).inc(n - seen)
                self._faults_exported[cause] = n
        c = loop.driver_counters
        if c is not None:
            m.bad_frames.set(c.bad_frames)
            m.blocks_dropped.set(c.extra.get("blocks_dropped", 0))
        m.state.set(-1 if state.state is None else state.state)
        m.confidence.set(state.confidence)
        applied = state.applied
        m.stimulating.set(1 if applied else 0)
        for k in ("frequency_hz", "amplitude_ma", "pulse_width_us"):
            m.applied.labels(param=k).set(applied[k] if applied else 0.0)

    def close(self) -> None:
        self.metrics.close()
