"""The driver: every server side by side in one run, step by step, one record per step.

For each repetition and server (order alternating between repetitions, so slow drifts of a
shared machine hit every server alike) two sessions, each on a freshly started server:

  throughput  TCP LF framing, TCP octet-counted (count messages over K connections, as fast
              as possible), then the UDP sweep (each offered rate for a few seconds from S
              sources) and a short RFC 5424 UDP step;
  sources     RSS and descriptors idle, then a few messages from each of N distinct addresses
              (127.1.x.y), then RSS and descriptors again.

A step: flush the page cache to disk (os.sync: earlier steps' writeback must not compete with
this one), sample the server's CPU time and UDP drop counters, run the generator (pinned to its
CPU), wait until every sent message is on disk or the line count has stopped growing for
`settle_s` (bounded by `max_wait_s`), sample again, verify the new lines.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtest import procfs
from loadtest.gen import Load, build_loadgen, run_load, send_many_sources
from loadtest.servers import Server, ServerSpec, code_digest
from loadtest.verify import LineCounter, Verifier

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "out"
UDP_RATES = (20_000, 50_000, 100_000, 150_000, 200_000, 300_000, 400_000)
POLL_S = 0.05
WARMUP_S = 0.5


@dataclass(frozen=True)
class Plan:
    servers: tuple[ServerSpec, ...]
    reps: int = 3
    sources: int = 16
    size: int = 200
    tcp_count: int = 1_000_000
    tcp_octet_count: int = 1_000_000
    tcp_conns: int = 4
    udp_rates: tuple[int, ...] = UDP_RATES
    udp_seconds: float = 5.0
    udp5424_rate: int = 20_000
    udp5424_seconds: float = 2.0
    many_sources: int = 10_000
    many_per_source: int = 3
    many_rate: int = 5_000
    port: int = 15514
    server_cpu: str | None = "0"
    gen_cpu: str | None = "1"
    settle_s: float = 2.0
    max_wait_s: float = 120.0
    gso: str = "auto"
    out_dir: Path = OUT_DIR
    keep_output: bool = False


@dataclass(frozen=True)
class Step:
    tag: str  # the run= tag of its messages, unique in a session
    label: str  # tcp-lf | tcp-octet | udp | udp-5424 | many-sources
    load: Load | None = None  # None: many-sources (sent from Python)
    rate: int = 0
    fmt: int = 3164


@dataclass
class Results:
    plan: dict[str, Any]
    machine: dict[str, str]
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def throughput_steps(plan: Plan) -> list[Step]:
    base = Load(proto="tcp", port=plan.port, run="", sources=plan.sources, size=plan.size)
    tcp = replace(base, conns=plan.tcp_conns, max_time_s=max(60.0, plan.max_wait_s))
    steps = []
    if plan.tcp_count:
        load = replace(tcp, run="tcplf", count=plan.tcp_count, framing="lf")
        steps.append(Step("tcplf", "tcp-lf", load))
    if plan.tcp_octet_count:
        load = replace(tcp, run="tcpoct", count=plan.tcp_octet_count, framing="octet")
        steps.append(Step("tcpoct", "tcp-octet", load))
    udp = replace(base, proto="udp", duration_s=plan.udp_seconds, gso=plan.gso)
    for rate in plan.udp_rates:
        steps.append(Step(f"udp{rate}", "udp", replace(udp, run=f"udp{rate}", rate=rate), rate))
    if plan.udp5424_rate:
        load = replace(udp, run="udp5424", rate=plan.udp5424_rate, fmt=5424)
        load = replace(load, duration_s=plan.udp5424_seconds)
        steps.append(Step("udp5424", "udp-5424", load, plan.udp5424_rate, 5424))
    return steps


def sources_steps(plan: Plan) -> list[Step]:
    if not plan.many_sources:
        return []
    return [Step("many", "many-sources", None, plan.many_rate)]


def run_plan(plan: Plan) -> Results:
    """All repetitions of all sessions of all servers; errors are recorded, not raised.

    Ctrl-C stops the run after cleaning up, keeping what was measured so far.
    """
    if plan.gen_cpu is not None:  # the driver stays off the server's CPU
        os.sched_setaffinity(0, procfs.cpu_list(plan.gen_cpu))
    exe = build_loadgen(plan.out_dir / "bin")
    # the command that made these numbers, shown with them (RESULTS.md)
    command = shlex.join(["python", "-m", "loadtest", *sys.argv[1:]])
    results = Results(plan=plan_dict(plan), machine={**procfs.machine(), "command": command})
    sessions = [("throughput", throughput_steps(plan)), ("sources", sources_steps(plan))]
    try:
        for rep in range(1, plan.reps + 1):
            order = plan.servers if rep % 2 else plan.servers[::-1]
            for spec in order:
                for name, steps in sessions:
                    if steps:
                        run_session(plan, spec, rep, name, steps, exe, results)
    except KeyboardInterrupt:
        logger.error("interrupted: the results hold what was measured so far")
        results.errors.append({"server": "-", "rep": 0, "session": "-", "error": "interrupted"})
    return results


def run_session(
    plan: Plan, spec: ServerSpec, rep: int, name: str, steps: list[Step], exe: Path,
    results: Results,
) -> None:  # fmt: skip
    """Start the server, run the steps, stop it; records (and any error) go into results."""
    base = plan.out_dir / "runs" / f"rep{rep}-{spec.slug}-{name}"
    shutil.rmtree(base, ignore_errors=True)
    server = Server(spec, plan.port, base, plan.server_cpu)
    logger.info("%s rep %d %s: starting", spec.name, rep, name)
    try:
        server.start()
        ready_s = server.wait_ready()
        time.sleep(WARMUP_S)
        idle = {
            "code": code_digest(spec), "ready_s": ready_s,
            "rss_idle": procfs.rss_bytes(server.pid),
            "fds_idle": procfs.fd_count(server.pid), "threads": procfs.thread_count(server.pid),
        }  # fmt: skip
        counter = LineCounter(server.log_dir)
        counter.poll()
        verifier = Verifier(server.log_dir, {s.tag: s.fmt for s in steps})
        verifier.scan()
        with open(base / "sent.jsonl", "a") as sent_log:
            for step in steps:
                rec = run_step(plan, server, step, exe, counter, verifier, sent_log)
                rec.update(server=spec.name, rep=rep, session=name, **idle)
                results.records.append(rec)
                logger.info("  %s", describe(rec))
    except Exception as exc:  # keep going: the other servers still get measured
        logger.error("%s rep %d %s: %s", spec.name, rep, name, exc)
        error = {"server": spec.name, "rep": rep, "session": name, "error": str(exc)}
        results.errors.append(error)
    finally:
        server.stop()
    if not plan.keep_output:
        shutil.rmtree(server.log_dir, ignore_errors=True)


def run_step(
    plan: Plan, server: Server, step: Step, exe: Path, counter: LineCounter,
    verifier: Verifier, sent_log: Any,
) -> dict[str, Any]:  # fmt: skip
    pid = server.pid
    os.sync()  # the previous steps' writeback must not run (on any CPU) during this one
    cpu0, drops0, kdrops0 = procfs.cpu_seconds(pid), _drops(plan.port), procfs.udp_rcvbuf_errors()
    lines0 = counter.poll()
    if step.load is None:
        sent = send_many_sources(
            plan.port, step.tag, sources=plan.many_sources, per_source=plan.many_per_source,
            rate=plan.many_rate, size=plan.size,
        )  # fmt: skip
    else:
        timeout_s = plan.udp_seconds * 2 + plan.max_wait_s + 60
        sent = run_load(exe, step.load, cpu=plan.gen_cpu, timeout_s=timeout_s)
    sent_log.write(json.dumps(sent) + "\n")
    sent_log.flush()
    waited_s, complete = wait_for_lines(plan, server, counter, lines0 + sent["sent"])
    rec: dict[str, Any] = {"step": step.tag, "label": step.label, "rate": step.rate}
    rec["cpu_s"] = procfs.cpu_seconds(pid) - cpu0
    rec["udp_drops"] = _drops(plan.port) - drops0
    rec["rcvbuf_errors"] = procfs.udp_rcvbuf_errors() - kdrops0
    if step.load is None:
        time.sleep(WARMUP_S)
        rec.update(rss=procfs.rss_bytes(pid), fds=procfs.fd_count(pid))
    server.remember_tree()
    verifier.scan()
    seqs = {step.tag: {int(s["src"]): int(s["seqs"]) for s in sent["streams"]}}
    v = verifier.summary(seqs, only=[step.tag])[step.tag]
    rec.update(
        sent=sent["sent"], gen_errors=sent["errors"], achieved_rate=sent["achieved_rate"],
        gso=sent["gso"], waited_s=waited_s, complete=complete, lines=v["lines"],
        received=v["received"], missing=v["missing"], duplicated=v["duplicated"],
        reordered=v["reordered"], unexpected=v["unexpected"], bad_lines=v["bad_lines"],
        bad=sum(v["bad_lines"].values()), examples=v["examples"],
    )  # fmt: skip
    planned = v["sent"]  # numbers used, including those the generator failed to send
    rec["recv_pct"] = 100.0 * v["received"] / planned if planned else 0.0
    rec["drop_pct"] = 100.0 * rec["udp_drops"] / planned if planned else 0.0
    rec["cpu_per_1m"] = rec["cpu_s"] / v["received"] * 1e6 if v["received"] else None
    if step.label.startswith("tcp") and counter.newest_mtime_ns > sent["first_send_ns"]:
        rec["e2e_s"] = (counter.newest_mtime_ns - sent["first_send_ns"]) / 1e9
        rec["msgs_per_s"] = v["received"] / rec["e2e_s"]
    return rec


def _drops(port: int) -> int:
    return procfs.udp_socket_drops(port) or 0


def wait_for_lines(
    plan: Plan, server: Server, counter: LineCounter, target: int
) -> tuple[float, bool]:
    """Until `target` lines are on disk (True) or the count stopped growing for settle_s."""
    t0 = last_change = time.monotonic()
    last = counter.poll()
    poll_s = POLL_S if len(counter.sizes) < 1000 else 0.5  # 10,000 files: stat less often
    while last < target:
        time.sleep(poll_s)
        now, lines = time.monotonic(), counter.poll()
        if lines != last:
            last, last_change = lines, now
        elif now - last_change >= plan.settle_s or now - t0 >= plan.max_wait_s:
            server.check_alive()
            return now - t0, False
    return time.monotonic() - t0, True


def describe(rec: dict[str, Any]) -> str:
    text = (
        f"{rec['step']:<10} sent={rec['sent']} recv={rec['recv_pct']:.2f}% "
        f"dup={rec['duplicated']} bad={rec['bad']} cpu={rec['cpu_s']:.2f}s "
        f"drops={rec['udp_drops']} waited={rec['waited_s']:.1f}s"
    )
    if "msgs_per_s" in rec:
        text += f" {rec['msgs_per_s']:,.0f} msg/s"
    if "rss" in rec:
        text += f" rss={rec['rss'] / 2**20:.1f}MiB fds={rec['fds']}"
    return text


def plan_dict(plan: Any) -> dict[str, Any]:
    """A plan (this module's or forwarding's RelayPlan) as JSON-ready data."""
    d = asdict(plan)
    d["servers"] = [asdict(s) for s in plan.servers]
    d["out_dir"] = str(plan.out_dir)
    return d


def save_results(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(results), indent=1, default=str))


def load_results(path: Path) -> Results:
    return Results(**json.loads(Path(path).read_text()))
