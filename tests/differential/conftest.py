"""Fixtures for the differential tests: the corpus and a real rsyslogd binary."""

from __future__ import annotations

import os

import pytest

from tests.rsyslogd import CorpusMessage, find_rsyslogd, load_corpus


@pytest.fixture(scope="session")
def corpus() -> list[CorpusMessage]:
    return load_corpus()


@pytest.fixture(scope="session")
def rsyslogd_binary() -> str:
    """The rsyslogd to compare with: skipped if missing, except on CI (CI=true) where it fails."""
    binary = find_rsyslogd()
    if binary is None:
        message = "rsyslogd not installed: apt-get install rsyslog"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary
