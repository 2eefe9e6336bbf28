"""relay.forward.target's log of upstream failures: a new reason at once, the same one again at
most once per FAILURE_LOG_INTERVAL_S with its count (a refusing upstream retried every 0.1 s
must not fill the log)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from relay.config import Forward
from relay.forward import target as target_module
from relay.forward.spool import Spool
from relay.forward.target import FAILURE_LOG_INTERVAL_S, Target


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_same_failure_is_logged_once_per_interval_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    # target's own clock only (the event loop keeps the real one)
    monkeypatch.setattr(target_module, "time", SimpleNamespace(monotonic=clock))
    config = Forward(name="up", host="127.0.0.1", port=9)
    target = Target(config, Spool(tmp_path, max_bytes=1 << 20))
    refused = ConnectionRefusedError(111, "Connection refused")
    with caplog.at_level(logging.WARNING, logger="relay.forward.target"):
        for _ in range(20):  # 20 retries within 2 s: one line
            target._connect_failed(refused)
            clock.now += 0.1
        assert caplog.text.count("cannot connect to 127.0.0.1:9") == 1
        clock.now += FAILURE_LOG_INTERVAL_S
        target._connect_failed(refused)  # a minute on: reported again, with the count
        assert caplog.text.count("cannot connect to 127.0.0.1:9") == 2
        assert "20 times since the last report" in caplog.text
        target._connect_failed(TimeoutError())  # a new reason: at once
        assert "cannot connect to 127.0.0.1:9: timed out" in caplog.text
    assert target.connect_failures == 22
    target.close()
