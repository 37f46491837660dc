"""Shared fixtures. An autouse guard fails any test that leaves threads or child processes behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def no_leaks(request: pytest.FixtureRequest):
    """Fail a test that leaves non-daemon threads or child processes running."""
    before_threads = set(threading.enumerate())
    me = psutil.Process(os.getpid())
    before_children = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 3.0
    while True:
        threads = [t for t in threading.enumerate() if t not in before_threads and t.is_alive()
                   and not t.daemon and not t.name.startswith(("pydevd", "asyncio"))]
        children = [p for p in me.children(recursive=True) if p.pid not in before_children
                    and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if (not threads and not children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for p in children:
        p.kill()
    assert not threads, f"test left threads running: {[t.name for t in threads]}"
    assert not children, f"test left child processes running: {[p.cmdline() for p in children]}"


@pytest.fixture(autouse=True)
def fresh_logging():
    """structlog's defaults for every test: a command run in process (replay configures warning level) must not
    filter the info events a later test captures."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def bundle() -> Any:
    """The default model bundle (models/default), loaded and verified once per session."""
    from neurostimd.model.runtime import load_bundle

    return load_bundle(ROOT / "models" / "default")


@pytest.fixture(scope="session")
def cfg() -> Any:
    """config/sim.toml, the default configuration (a test that needs another builds its own)."""
    from neurostimd.config import load_config

    return load_config(ROOT / "config" / "sim.toml")


@pytest.fixture
def outlets() -> Iterator[list[Any]]:
    """LSL outlet processes a test starts (tests.sources.test_lsl_source.OutletProcess), killed after it."""
    started: list[Any] = []
    yield started
    for o in started:
        o.kill()


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or a skip with a message saying where to put it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real recordings not found at {SHARED_DATA}; place the shared data folder beside the project")
    return SHARED_DATA
