"""The forward targets of one process: the pipeline offers them every received batch.

Builds each `[[forward]]` target on its spool directory (adopting the spools of workers that no
longer exist), runs their senders and housekeeping (fsync on the interval policy, the
backpressure gate of `on_full = "block"`, counters in the log), and stops them cleanly. A target
whose spool directory cannot be used at all does not run: it is reported (the log, /readyz,
`forward_spool_unusable`) and everything else runs without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from relay.config import Forward
from relay.forward.relp_sender import RelpTarget
from relay.forward.spool import Spool, SpoolUnusable
from relay.forward.target import SETTLE_MAX_S, Target
from relay.ingest.limits import Gate
from relay.message import Offered, SyslogMessage

logger = logging.getLogger(__name__)

HELD_MAX_MESSAGES = 1_000_000
"""While another process still owns the spools (a rolling update), what the targets are offered
waits in memory, up to this many messages (beyond: dropped, counted, logged)."""


def spool_directory(state_dir: str, target: str, worker: int) -> Path:
    return Path(state_dir) / "spool" / target / f"w{worker}"


def open_target(config: Forward, state_dir: str, worker: int, workers: int) -> Target:
    """The target's spool of this worker, plus the spools left by workers beyond `workers`
    (after `workers` was lowered) that fall to this one."""

    def spool_at(directory: Path) -> Spool:
        return Spool(
            directory,
            max_bytes=config.max_spool_bytes,
            segment_bytes=config.segment_bytes,
            on_full=config.on_full,
            fsync=config.fsync,
            fsync_interval_s=config.fsync_interval_s,
        )

    own = spool_at(spool_directory(state_dir, config.name, worker))  # raises SpoolUnusable
    orphans = []
    for directory in sorted(spool_directory(state_dir, config.name, 0).parent.glob("w*")):
        index = directory.name[1:]
        if index.isdigit() and int(index) >= workers and int(index) % workers == worker:
            try:
                orphans.append((spool_at(directory), directory))
            except SpoolUnusable as exc:
                logger.error("forward %s: %s: not sent", config.name, exc)
    kind = RelpTarget if config.protocol in ("relp", "relp-tls") else Target
    return kind(config, own, orphans)


def open_targets(
    configs: list[Forward], state_dir: str, worker: int, workers: int
) -> tuple[list[Target], dict[str, str]]:
    """Every target of this worker, and those whose spool cannot be used (left out: name ->
    why), which are reported."""
    targets, unusable = [], {}
    for config in configs:
        try:
            targets.append(open_target(config, state_dir, worker, workers))
        except SpoolUnusable as exc:
            logger.error(
                "forward %s: %s; this target does not run until it is fixed and plura-relay "
                "restarted (its messages are not spooled; the local files get them)",
                config.name, exc,
            )  # fmt: skip
            unusable[config.name] = str(exc)
    return targets, unusable


class Forwarders:
    """All targets of one process: what the pipeline offers every message to."""

    def __init__(
        self,
        targets: list[Target],
        unusable: dict[str, str] | None = None,
        *,
        held: bool = False,
    ) -> None:
        """`unusable`: targets left out, name -> why; `held`: the spools are not ours yet
        (`adopt` hands them over)."""
        self.targets = targets
        self.unusable = unusable or {}  # target -> why its spool cannot be used
        self.not_spooled = dict.fromkeys(self.unusable, 0)
        self.gate = Gate()
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        Take = tuple[list[Offered], str, float, bool, Callable[[bytes, str, float], SyslogMessage]]
        self._held: list[Take] | None = [] if held else None
        self._held_messages = 0
        self.held_dropped = 0

    def adopt(self, targets: list[Target], unusable: dict[str, str] | None = None) -> None:
        """The spools are ours now: give them what was offered meanwhile, in order; start."""
        held, self._held = self._held or [], None
        self.targets = targets
        self.unusable = unusable or {}
        self.not_spooled = dict.fromkeys(self.unusable, 0)
        for offered, peer, received_at, lossless, parse in held:
            for target in targets:
                target.take(offered, peer, received_at, lossless or self._draining, parse)
        if self.held_dropped:
            logger.error("forward: %d messages dropped while waiting for the spools (more than"
                         " %d held)", self.held_dropped, HELD_MAX_MESSAGES)  # fmt: skip
        self._update_gate()
        self.start()

    def take(
        self,
        offered: list[Offered],
        peer: str,
        received_at: float,
        lossless: bool,
        parse: Callable[[bytes, str, float], SyslogMessage],
    ) -> None:
        """After every received batch: each target spools (and writes, one write per target)
        what it wants of it. `lossless`: TCP data, taken even by a full `block` spool (its
        senders are paused afterwards instead)."""
        if self._held is not None:
            if self._held_messages + len(offered) > HELD_MAX_MESSAGES:
                self.held_dropped += len(offered)
            else:
                self._held.append((offered, peer, received_at, lossless, parse))
                self._held_messages += len(offered)
            return
        lossless = lossless or self._draining
        for name in self.not_spooled:  # a target without a spool (before its filter)
            self.not_spooled[name] += len(offered)
        for target in self.targets:
            target.take(offered, peer, received_at, lossless, parse)
        self._update_gate()

    def make_safe(self, fsync: bool) -> bool:
        """Whether everything taken so far is written to the spools' segments (and fsynced,
        with `fsync`): what a RELP acknowledgement promises. False while the spools are not
        this process's yet (held in memory) or a write failed (kept in memory, retried)."""
        if self._held is not None:
            return False
        safe = True
        for target in self.targets:
            spool = target.spool
            spool.flush()
            if fsync:
                spool.sync()
            safe = safe and spool.unwritten_bytes == 0
        return safe

    def _update_gate(self) -> None:
        """Closed while a `block` spool is full (TCP senders wait), except while draining."""
        if not self._draining:
            self.gate.set_closed(
                any(t.spool.full and t.config.on_full == "block" for t in self.targets)
            )

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for target in self.targets:
            self._tasks.append(loop.create_task(target.run()))
            self._tasks.append(loop.create_task(self._housekeeping(target)))

    async def _housekeeping(self, target: Target) -> None:
        """fsync on the interval policy, reopen the gate as the spool drains, log counters."""
        config = target.config
        tick = min(config.fsync_interval_s, 0.1)
        last_sync = last_log = time.monotonic()
        logged: dict[str, float] = {}
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if config.fsync == "interval" and now - last_sync >= config.fsync_interval_s:
                last_sync = now
                target.spool.sync()
            if self.gate.closed:
                self._update_gate()  # reopen as the spool drains
            interval = config.stats_log_interval_s
            if interval and now - last_log >= interval:
                last_log = now
                logged = self._log_stats(target, logged)

    @staticmethod
    def _log_stats(target: Target, before: dict[str, float]) -> dict[str, float]:
        stats = target.stats(time.time())
        counters = {k: v for k, v in stats.items() if k not in ("spool_oldest_age_s",)}
        if counters != before:
            relp = ""
            if "relp_acked" in stats:  # what only a RELP upstream tells
                relp = (
                    f", acknowledged {stats['relp_acked']:.0f}, resent "
                    f"{stats['relp_resent']:.0f}, refused {stats['relp_refused']:.0f}"
                )
            logger.info(
                "forward %s: sent %d%s, spooled %d, pending %d (%d bytes, oldest %.0fs), "
                "dropped %d full / %d oldest, %s",
                target.config.name, stats["sent"], relp, stats["spooled"],
                stats["spool_records"], stats["spool_bytes"], stats["spool_oldest_age_s"],
                stats["dropped_full"], stats["dropped_oldest"],
                "connected" if target.connected else "not connected",
            )  # fmt: skip
        return counters

    def drain(self) -> None:
        """Shutdown: let paused TCP senders go on, and take all they send (the spool may pass
        its bound: what was read from a socket is never dropped)."""
        self._draining = True
        self.gate.set_closed(False)

    async def stop(self) -> None:
        if self._held:
            logger.error("forward: %d messages never spooled: the spools were not handed over",
                         self._held_messages)  # fmt: skip
        await asyncio.gather(
            *(t.settle(min(t.config.confirm_after_s + 1.0, SETTLE_MAX_S)) for t in self.targets)
        )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for target in self.targets:
            self._log_stats(target, {})
            target.close()

    def stats(self) -> dict[str, float]:
        """`forward_<counter>|<target>` for metrics; summed over workers by a supervisor."""
        now = time.time()
        stats: dict[str, float] = {}
        for target in self.targets:
            for key, value in target.stats(now).items():
                stats[f"forward_{key}|{target.config.name}"] = value
            stats[f"forward_spool_unusable|{target.config.name}"] = 0
        for name, count in self.not_spooled.items():
            stats[f"forward_spool_unusable|{name}"] = 1
            stats[f"forward_dropped_no_spool|{name}"] = count
        return stats

    def problem(self) -> str | None:
        """Why this process is not ready as far as forwarding goes (None: it is)."""
        if not self.unusable:
            return None
        return "; ".join(f"forward {n}: {why}" for n, why in self.unusable.items())
