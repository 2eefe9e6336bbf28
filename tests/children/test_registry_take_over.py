"""Registry.take_over: a rolling update's new process merges what the old one saved at exit
with what it observed meanwhile; counts add up and nothing is logged or announced twice."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from relay.children.registry import Registry, load_children


def test_take_over_merges_the_old_owners_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Registry(tmp_path)
    first.observe("10.0.0.1", b"a", 100.0, count=5)
    first.mark_announced("10.0.0.1")
    first.close()  # the state before the update: 10.0.0.1 with 5 messages

    old, new = Registry(tmp_path), Registry(tmp_path)  # both loaded the same file
    old.observe("10.0.0.1", b"a", 200.0, count=3)  # the old one before it hands over
    old.observe("10.0.0.2", b"b", 210.0, count=2)
    new.observe("10.0.0.1", b"a2", 300.0, count=4)  # the new one, meanwhile
    new.observe("10.0.0.2", b"b", 305.0, count=1)
    new.observe("10.0.0.3", b"c", 310.0, count=7)
    old.close()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        new.take_over()
        new.close()
    got = {c.ip: c for c in load_children(tmp_path)}
    assert {ip: c.messages for ip, c in got.items()} == {
        "10.0.0.1": 5 + 3 + 4, "10.0.0.2": 2 + 1, "10.0.0.3": 7,
    }  # fmt: skip
    assert (got["10.0.0.1"].first_seen, got["10.0.0.1"].last_seen) == (100.0, 300.0)
    assert got["10.0.0.1"].hostname == "a2" and got["10.0.0.1"].announced
    assert (got["10.0.0.2"].first_seen, got["10.0.0.2"].last_seen) == (210.0, 305.0)
    logged = [r.getMessage() for r in caplog.records if "new child server" in r.getMessage()]
    assert logged == ["new child server 10.0.0.3 (hostname c)"]  # 10.0.0.2 was the old one's


def test_take_over_twice_does_not_count_twice(tmp_path: Path) -> None:
    old, new = Registry(tmp_path), Registry(tmp_path)
    old.observe("10.0.0.1", b"a", 1.0, count=2)
    old.close()
    new.observe("10.0.0.1", b"a", 2.0, count=1)
    new.take_over()
    new.take_over()  # the file now holds nothing newer than what was merged
    new.close()
    assert [c.messages for c in load_children(tmp_path)] == [3]
