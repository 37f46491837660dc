"""The comparison row of the loop benchmark: the daemon's own ClosedLoop on the simulated board, but with the
research notebook's inference — Keras `model.predict` on each window, in process. Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


class KerasPredictBundle:
    """The bundle, with predict() done the notebook's way."""

    def __init__(self, bundle: Any, model: Any) -> None:
        self._bundle = bundle
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bundle, name)

    def predict(self, window: np.ndarray) -> np.ndarray:
        return np.asarray(self._model.predict(window[None], verbose=0)[0], dtype=np.float32)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pty", required=True)
    p.add_argument("--seconds", type=float, default=30.0)
    a = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import structlog

    from neurostimd.clock import MonotonicClock
    from neurostimd.commands.bench._procs import ROOT, bench_config, pct
    from neurostimd.config import load_config
    from neurostimd.drivers.neurostim_board.driver import SerialBoardDriver
    from neurostimd.listeners import BaseListener
    from neurostimd.loop import ClosedLoop
    from neurostimd.model.runtime import load_bundle
    from neurostimd.outputs.audit import AuditLog
    from neurostimd.sources.board import BoardSource

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    work = Path(tempfile.mkdtemp(prefix="neurostimd-bench-nb-"))
    cfg = load_config(bench_config(work))
    bundle = load_bundle(ROOT / "models" / "default")
    model = keras.saving.load_model(bundle.path / "model.keras", compile=False)
    nb = KerasPredictBundle(bundle, model)
    clock = MonotonicClock()
    driver = SerialBoardDriver(port=a.pty)
    driver.open()
    source = BoardSource(driver)
    source.open()
    ticks: list[Any] = []

    class Ticks(BaseListener):
        def on_tick(self, stats: Any, loop: Any) -> None:
            ticks.append(stats)

    with AuditLog(work / "audit.jsonl") as audit:
        loop = ClosedLoop(cfg, clock=clock, source=source, bundle=nb, audit=audit, driver=driver,  # type: ignore[arg-type]
                          listeners=[Ticks()])
        t0 = time.monotonic()
        loop.run(should_stop=lambda: False, duration_s=a.seconds)
        wall = time.monotonic() - t0
        loop.stop_stimulation("bench_end")
    source.close()
    driver.close()
    due = int(wall * 1000 / cfg.loop.cadence_ms)
    missed = sum(t.overrun_ticks for t in ticks)
    print(json.dumps({
        "predict_p50_ms": pct([t.stages_ms["inference"] for t in ticks], 50),
        "predict_p99_ms": pct([t.stages_ms["inference"] for t in ticks], 99),
        "jitter_p99_ms": pct([t.jitter_ms for t in ticks], 99),
        "decisions_made": len(ticks),
        "decisions_due": due,
        "missed_decisions": missed,
        "tick_to_ack_p99_ms": pct([t.ack_ms for t in ticks if t.ack_ms is not None], 99),
    }))


if __name__ == "__main__":
    main()
