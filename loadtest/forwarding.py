"""Relay mode under load: what forwarding every message upstream costs, rsyslog beside plura-relay.

Per repetition, server and mode (the order reverses every other repetition, as in driver.py) one
session on a freshly started server and a freshly started sink (sink.c, the upstream):

  rsyslog      PLURA's collector config (the ceelog files, as `run` measures them) plus PLURA's
               rsyslog relay action, `relay.node.rsyslog_conf.origip_relay_conf`: omfwd over TCP,
               octet-counted, the `[origip=%fromhost-ip%]` template, a disk-assisted LinkedList
               action queue (queue.filename "fwd" in its work dir, saveOnShutdown,
               resumeRetryCount -1): the closest rsyslog has to plura-relay's spool;
  plura-relay  the same ceelog output plus one `[[forward]]` target (rfc3164-origip, TCP,
               octet-counting, write-through disk spool, fsync = "interval");
  collector    (mode) the same server without forwarding: the baseline of the same run.

The step: `count` messages over K TCP connections as fast as possible. It ends when every
message is in the ceelog files and at the sink, or neither grew for `settle_s`. Messages still
missing at the sink then get a nudge (one more message, and `settle_s` again: rsyslog's
disk-assisted queue can strand a tail of messages); any still missing after that, the server is
restarted on its queue once, to tell "lost" from "kept on disk". Figures: ceelog msg/s (first
send -> newest line on disk), forwarded msg/s (first send -> the sink reading the last frame),
server CPU s per 1M (step and drain), RSS idle, after and peak (VmHWM), the queue's peak bytes
on disk, connections the server opened to the sink, and the sink's own CPU.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest import procfs
from loadtest.driver import OUT_DIR, POLL_S, WARMUP_S, Results, plan_dict
from loadtest.gen import Load, build_loadgen, run_load, send_probe
from loadtest.servers import Server, ServerSpec, code_digest
from loadtest.sink import Sink, build_sink, check_sample
from loadtest.verify import LineCounter, Verifier
from relay.node.rsyslog_conf import origip_relay_conf

logger = logging.getLogger(__name__)

FORWARD_NAME = "up"
RSYSLOG_QUEUE = "fwd"  # queue.filename of the omfwd action
RUN_TAG = "relay"
READY_FRAMES = 2  # the readiness probes (UDP, TCP) forwarded: the upstream connection is up
SMOKE = {"reps": 1, "count": 3000, "conns": 2, "settle_s": 1.0, "max_wait_s": 20.0}


@dataclass(frozen=True)
class RelayPlan:
    servers: tuple[ServerSpec, ...]
    reps: int = 3
    count: int = 400_000
    conns: int = 4
    framing: str = "octet"  # generator -> server; server -> sink is always octet-counted
    sources: int = 16
    size: int = 200
    port: int = 15514
    server_cpu: str | None = "0"
    gen_cpu: str | None = "1"
    sink_cpu: str | None = "1"
    settle_s: float = 2.0
    max_wait_s: float = 120.0
    sample_every: int = 1000
    baseline: bool = True  # also each server without forwarding, in the same run
    out_dir: Path = OUT_DIR / "relay"
    keep_output: bool = False


# ---------------------------------------------------------------- the servers' configuration


def forward_toml(upstream_port: int) -> str:
    return (
        "[[forward]]\n"
        f'name = "{FORWARD_NAME}"\n'
        'host = "127.0.0.1"\n'
        f"port = {upstream_port}\n"
        'protocol = "tcp"\n'
        'framing = "octet-counting"\n'
        'format = "rfc3164-origip"\n'
        'fsync = "interval"\n'
    )


def validate_rsyslog_conf(conf: Path) -> None:
    done = subprocess.run(
        ["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise RuntimeError(f"rsyslogd -N1 rejects {conf}: {done.stderr.strip()[-800:]}")


class RelayServer(Server):
    """A server of servers.py that also forwards every message to 127.0.0.1:upstream_port
    (upstream_port None: it does not, the baseline)."""

    def __init__(
        self, spec: ServerSpec, port: int, base: Path, cpu: str | None, upstream_port: int | None
    ) -> None:
        super().__init__(spec, port, base, cpu)
        self.upstream_port = upstream_port

    def spool_bytes(self) -> int:
        """Bytes on disk of the forward's queue: plura-relay's spool directory, or rsyslog's
        action queue files (`fwd.*` in its workDirectory, the work dir)."""
        if self.spec.kind == "rsyslog":
            return sum(_size(path) for path in self.work_dir.glob(f"{RSYSLOG_QUEUE}.*"))
        spool = self.work_dir / "state" / "spool" / FORWARD_NAME
        return sum(_size(Path(root, name)) for root, _, names in os.walk(spool) for name in names)

    def command(self) -> list[str]:
        argv = super().command()  # writes rsyslog.conf for rsyslog
        if self.upstream_port is None:
            return argv
        if self.spec.kind == "rsyslog":
            conf = self.work_dir / "rsyslog.conf"
            with open(conf, "a") as fh:
                fh.write(origip_relay_conf("127.0.0.1", self.upstream_port, queue=RSYSLOG_QUEUE))
            validate_rsyslog_conf(conf)
            return argv
        toml = self.work_dir / "relay.toml"
        toml.write_text(forward_toml(self.upstream_port))
        return [*argv, "--config", str(toml)]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # a segment deleted meanwhile
        return 0


# ---------------------------------------------------------------- the run

MODES = ("relay", "collector")  # collector: the same server without forwarding (baseline)


def run_plan(plan: RelayPlan) -> Results:
    """Every repetition of every server (and mode); errors are recorded, not raised."""
    if plan.gen_cpu is not None:  # the driver stays off the server's CPU
        os.sched_setaffinity(0, procfs.cpu_list(plan.gen_cpu))
    exe, sink_exe = build_loadgen(plan.out_dir / "bin"), build_sink(plan.out_dir / "bin")
    machine = {**procfs.machine(), "loadavg_start": procfs.loadavg()}
    results = Results(plan=plan_dict(plan), machine=machine)
    modes = MODES if plan.baseline else MODES[:1]
    sessions = [(spec, mode) for spec in plan.servers for mode in modes]
    try:
        for rep in range(1, plan.reps + 1):
            for spec, mode in sessions if rep % 2 else sessions[::-1]:
                run_session(plan, spec, mode, rep, exe, sink_exe, results)
    except KeyboardInterrupt:
        logger.error("interrupted: the results hold what was measured so far")
        results.errors.append({"server": "-", "rep": 0, "session": "-", "error": "interrupted"})
    results.machine["loadavg_end"] = procfs.loadavg()
    return results


def run_session(
    plan: RelayPlan, spec: ServerSpec, mode: str, rep: int, exe: Path, sink_exe: Path,
    results: Results,
) -> None:  # fmt: skip
    """Start a sink and the server, run the step, stop both; the record goes into results."""
    base = (plan.out_dir / "runs" / f"rep{rep}-{spec.slug}-{mode}").resolve()
    shutil.rmtree(base, ignore_errors=True)
    logger.info("%s rep %d %s: starting (load %s)", spec.name, rep, mode, procfs.loadavg())
    sink: Sink | None = None
    server: RelayServer | None = None
    try:
        sink = Sink(
            sink_exe, base / "sink", cpu=plan.sink_cpu, sample_every=plan.sample_every,
            max_time_s=plan.max_wait_s * 3 + 300,
        )  # fmt: skip
        upstream = sink.port if mode == "relay" else None
        server = RelayServer(spec, plan.port, base, plan.server_cpu, upstream)
        server.start()
        idle = {"code": code_digest(spec), "ready_s": server.wait_ready()}
        if upstream is not None:
            wait_connected(server, sink)
        time.sleep(WARMUP_S)
        idle.update(
            rss_idle=procfs.rss_bytes(server.pid), threads=procfs.thread_count(server.pid),
            loadavg=procfs.loadavg(),
        )  # fmt: skip
        rec = run_step(plan, server, sink, exe)
        rec.update(server=spec.name, rep=rep, session=mode, label=mode, **idle)
        t0 = time.monotonic()
        server.stop()
        rec["stop_s"] = time.monotonic() - t0
        rec["spool_after_stop_bytes"] = server.spool_bytes()
        if rec.get("fwd_missing"):
            rec.update(recover_by_restart(plan, server, sink))
        results.records.append(rec)
        logger.info("  %s", describe(rec))
    except Exception as exc:  # keep going: the other servers still get measured
        logger.error("%s rep %d %s: %s", spec.name, rep, mode, exc)
        results.errors.append({"server": spec.name, "rep": rep, "session": mode, "error": str(exc)})
    finally:
        if server is not None:
            server.stop()
        if sink is not None:
            sink.stop()
    if not plan.keep_output:
        shutil.rmtree(base / "logs", ignore_errors=True)


def recover_by_restart(plan: RelayPlan, server: RelayServer, sink: Sink) -> dict[str, Any]:
    """Messages the sink still lacks after the nudge: lost, or kept on disk? Start the server
    again on the same spool/queue, see what it delivers, stop it."""
    logger.info("  restarting %s on its spool: does it deliver the rest?", server.spec.name)
    server.start()
    server.wait_ready()
    t0 = last_change = time.monotonic()
    last = sink.counts()["frames"]
    while time.monotonic() - last_change < plan.settle_s and time.monotonic() - t0 < 60:
        time.sleep(POLL_S)
        if (frames := sink.counts()["frames"]) != last:
            last, last_change = frames, time.monotonic()
    server.stop()
    got = [s for s in sink.dump()["streams"] if s["run"] == RUN_TAG]
    return {
        "restart_received": sum(s["received"] for s in got),
        "restart_duplicated": sum(s["duplicated"] for s in got),
    }


def wait_connected(server: Server, sink: Sink, timeout_s: float = 30.0) -> None:
    """Until the readiness probes reached the sink: the forward connection is up."""
    deadline = time.monotonic() + timeout_s
    while sink.counts()["frames"] < READY_FRAMES:
        server.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.spec.name} forwarded no probe to the sink in time")
        time.sleep(POLL_S)


def run_step(plan: RelayPlan, server: RelayServer, sink: Sink, exe: Path) -> dict[str, Any]:
    forwards = server.upstream_port is not None
    counter = LineCounter(server.log_dir)
    verifier = Verifier(server.log_dir, {RUN_TAG: 3164})
    verifier.scan()
    pid = server.pid
    os.sync()  # earlier writeback must not run during the step
    cpu0, sink_cpu0, before = procfs.cpu_seconds(pid), procfs.cpu_seconds(sink.pid), sink.counts()
    lines0 = counter.poll()
    load = Load(
        proto="tcp", port=plan.port, run=RUN_TAG, count=plan.count, conns=plan.conns,
        sources=plan.sources, size=plan.size, framing=plan.framing,
        max_time_s=max(60.0, plan.max_wait_s),
    )  # fmt: skip
    sent = run_load(exe, load, cpu=plan.gen_cpu, timeout_s=plan.max_wait_s + 120)
    with open(server.work_dir / "sent.jsonl", "a") as fh:
        fh.write(json.dumps(sent) + "\n")
    target = before["frames"] + (sent["sent"] if forwards else 0)
    waited = wait_for_both(plan, server, sink, counter, lines0 + sent["sent"], target)
    first, newest_line_ns = sink.counts(), counter.newest_mtime_ns  # before any nudge
    rec: dict[str, Any] = {"step": RUN_TAG, "waited_s": waited["waited_s"]}
    rec["spool_peak_bytes"] = waited["spool_peak_bytes"]
    rec["fwd_stuck"] = max(0, target - first["frames"])
    if rec["fwd_stuck"]:  # one more message, and as long again, for a tail kept in a queue
        server.probes += 1
        send_probe(plan.port, "tcp", server.probes)
        more = wait_for_both(plan, server, sink, counter, 0, target + 1)
        rec["waited_s"] += more["waited_s"]
    rec["cpu_s"] = procfs.cpu_seconds(pid) - cpu0
    rec["cpu_per_1m"] = rec["cpu_s"] / sent["sent"] * 1e6 if sent["sent"] else None
    rec.update(rss=procfs.rss_bytes(pid), rss_peak=procfs.peak_rss_bytes(pid))
    rec.update(ceelog_figures(verifier, newest_line_ns, sent))
    if forwards:
        rec.update(sink_figures(sink, before, first, sent))
        rec["sink_cpu_s"] = procfs.cpu_seconds(sink.pid) - sink_cpu0
        if rec.get("fwd_front_e2e_s"):
            rec["sink_cpu_pct"] = 100.0 * rec["sink_cpu_s"] / rec["fwd_front_e2e_s"]
    return rec


def wait_for_both(
    plan: RelayPlan, server: RelayServer, sink: Sink, counter: LineCounter, lines: int,
    frames: int,
) -> dict[str, Any]:  # fmt: skip
    """Until `lines` lines are on disk and `frames` frames at the sink, or neither count grew
    for settle_s (bounded by max_wait_s); tracks the spool's size meanwhile."""
    t0 = last_change = now = time.monotonic()
    state = (counter.poll(), sink.counts()["frames"])
    peak = server.spool_bytes()
    while state[0] < lines or state[1] < frames:
        time.sleep(POLL_S)
        peak = max(peak, server.spool_bytes())
        now, new = time.monotonic(), (counter.poll(), sink.counts()["frames"])
        if new != state:
            state, last_change = new, now
        elif now - last_change >= plan.settle_s or now - t0 >= plan.max_wait_s:
            server.check_alive()
            break
    return {"waited_s": now - t0, "spool_peak_bytes": peak}


def ceelog_figures(verifier: Verifier, newest_line_ns: int, sent: dict[str, Any]) -> dict[str, Any]:
    verifier.scan()
    seqs = {RUN_TAG: {int(s["src"]): int(s["seqs"]) for s in sent["streams"]}}
    v = verifier.summary(seqs, only=[RUN_TAG])[RUN_TAG]
    out: dict[str, Any] = {
        "sent": sent["sent"], "gen_errors": sent["errors"], "gen_elapsed_s": sent["elapsed_s"],
        "lines": v["lines"], "received": v["received"], "missing": v["missing"],
        "duplicated": v["duplicated"], "reordered": v["reordered"],
        "bad_lines": v["bad_lines"], "bad": sum(v["bad_lines"].values()),
        "examples": v["examples"],
    }  # fmt: skip
    if newest_line_ns > sent["first_send_ns"]:
        out["e2e_s"] = (newest_line_ns - sent["first_send_ns"]) / 1e9
        out["msgs_per_s"] = v["received"] / out["e2e_s"]
    return out


SINK_ERRORS = ("framing_errors", "no_stamp", "no_tokens", "stamp_after_body", "ip_mismatch")


def sink_figures(
    sink: Sink, before: dict[str, Any], first: dict[str, Any], sent: dict[str, Any]
) -> dict[str, Any]:
    """What reached the sink: per-stream counts, frame checks, the sample, forwarding speed.
    `first`: the sink's counts when the first wait ended (before any nudge)."""
    dump = sink.dump()
    sent_seqs = {int(s["src"]): int(s["seqs"]) for s in sent["streams"]}
    got = {s["src"]: s for s in dump["streams"] if s["run"] == RUN_TAG}
    out: dict[str, Any] = {
        "fwd_received": sum(s["received"] for s in got.values()),
        "fwd_missing": sum(max(0, n - got.get(src, {}).get("received", 0))
                           for src, n in sent_seqs.items()),
        "fwd_duplicated": sum(s["duplicated"] for s in got.values()),
        "fwd_reordered": sum(s["reordered"] for s in got.values()),
        "fwd_conns": dump["conns"] - before["conns"],
        "fwd_errors": {k: dump[k] - before[k] for k in SINK_ERRORS},
    }  # fmt: skip
    out["fwd_bad"] = sum(out["fwd_errors"].values())
    out.update(check_sample(sink.sample_path, RUN_TAG))
    # until the last frame before the wait ended (a stall, if some got stuck): all repetitions
    arrived = first["frames"] - before["frames"]
    out["fwd_front_e2e_s"] = (first["last_ns"] - sent["first_send_ns"]) / 1e9
    if out["fwd_front_e2e_s"] > 0:
        out["fwd_front_msgs_per_s"] = arrived / out["fwd_front_e2e_s"]
    if arrived >= sent["sent"]:  # complete without a nudge
        out["fwd_e2e_s"] = out["fwd_front_e2e_s"]
        out["fwd_msgs_per_s"] = out["fwd_received"] / out["fwd_e2e_s"]
    return out


def describe(rec: dict[str, Any]) -> str:
    text = f"{rec['label']:<9} sent={rec['sent']} ceelog={rec['received']} bad={rec['bad']} "
    text += f"cpu={rec['cpu_s']:.2f}s"
    if "fwd_received" in rec:
        text += (
            f" sink={rec['fwd_received']} missing={rec['fwd_missing']} "
            f"dup={rec['fwd_duplicated']} reord={rec['fwd_reordered']} "
            f"stamp_errors={rec['fwd_bad']} sample={rec['sample_checked']}"
            f"/{rec['sample_failed']}bad conns={rec['fwd_conns']} "
            f"spool_peak={rec['spool_peak_bytes'] / 2**20:.1f}MiB"
        )
    if "msgs_per_s" in rec:
        text += f"; ceelog {rec['msgs_per_s']:,.0f} msg/s"
    if "fwd_msgs_per_s" in rec:
        text += f", forwarded {rec['fwd_msgs_per_s']:,.0f} msg/s"
    if rec["fwd_stuck"]:
        text += f"; {rec['fwd_stuck']} stuck, {rec['fwd_missing']} still missing after a nudge"
    if "restart_received" in rec:
        text += f", {rec['restart_received'] - rec['fwd_received']} delivered after a restart"
    return text


def smoke_problems(results: Results, names: list[str]) -> list[str]:
    """Harness failures (no thresholds): a server failed, nothing arrived, or rsyslog's output
    failed a check (then the generator, the sink or a checker is wrong)."""
    problems = [f"{e['server']} {e['session']}: {e['error']}" for e in results.errors]
    for name in names:
        recs = [r for r in results.records if r["server"] == name]
        if not recs and not results.errors:
            problems.append(f"{name}: no step ran")
        for r in recs:
            if r["received"] == 0:
                problems.append(f"{name} {r['label']}: nothing in the ceelog files")
            if r["label"] == "relay" and not (r["fwd_received"] and r["sample_checked"]):
                problems.append(f"{name}: nothing arrived at the sink, or nothing was sampled")
            if name == "rsyslog" and (r["bad"] or r.get("fwd_bad") or r.get("sample_failed")):
                problems.append(
                    f"rsyslog: lines or frames failed checks (a checker is wrong): "
                    f"{r['examples'][:1]} {r.get('fwd_errors')} {r.get('sample_examples')}"
                )
    return problems
