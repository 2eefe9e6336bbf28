"""The relay results (RELAY-RESULTS.md): median [min-max] per server, ratios to rsyslog, checks.

Everything above HAND_WRITTEN is rendered from the records; what follows that line in an
existing file (an analysis written by hand) is kept when the report is written again.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from loadtest.driver import Results
from loadtest.report import Table, integer, mib, servers_of, two

HAND_WRITTEN = "<!-- hand-written below this line: kept when the report is rendered again -->"


def get(results: Results, key: str, label: str = "relay") -> Any:
    """server -> the values of `key` over its repetitions in mode `label` (relay|collector)."""
    return lambda server: [
        r[key]
        for r in results.records
        if r["server"] == server and r["label"] == label and r.get(key) is not None
    ]  # fmt: skip


def extra(results: Results, key: str) -> Any:
    """server -> [median with forwarding - median without] (the cost of forwarding)."""

    def values(server: str) -> list[float]:
        relay, alone = get(results, key)(server), get(results, key, "collector")(server)
        return [statistics.median(relay) - statistics.median(alone)] if relay and alone else []

    return values


def one(x: float) -> str:
    return f"{x:.1f}"


def summary_table(results: Results, servers: list[str]) -> str:
    t = Table("figure", servers)
    t.add("into the ceelog files: msg/s", get(results, "msgs_per_s"), integer)
    t.add("forwarded, every message at the sink: msg/s", get(results, "fwd_msgs_per_s"), integer)
    t.add(
        "forwarded, up to the last frame before a stall: msg/s",
        get(results, "fwd_front_msgs_per_s"),
        integer,
    )
    t.add("server CPU s per 1M msgs (both outputs)", get(results, "cpu_per_1m"), two)
    t.add("RSS idle (MiB)", get(results, "rss_idle"), mib)
    t.add("RSS after the step (MiB)", get(results, "rss"), mib)
    t.add("peak RSS, VmHWM (MiB)", get(results, "rss_peak"), mib)
    t.add("spool/queue on disk, peak (MiB)", get(results, "spool_peak_bytes"), mib)
    t.add("connections opened to the sink during the step", get(results, "fwd_conns"), integer)
    t.add("sink CPU, % of the forwarding time", get(results, "sink_cpu_pct"), one)
    if any(r["label"] == "collector" for r in results.records):
        t.add(
            "*without forwarding:* ceelog msg/s", get(results, "msgs_per_s", "collector"), integer
        )
        t.add("*without forwarding:* CPU s per 1M", get(results, "cpu_per_1m", "collector"), two)
        t.add("*without forwarding:* peak RSS (MiB)", get(results, "rss_peak", "collector"), mib)
        t.add("**forwarding's cost:** extra CPU s per 1M", extra(results, "cpu_per_1m"), two)
        t.add("**forwarding's cost:** extra peak RSS (MiB)", extra(results, "rss_peak"), mib)
    return t.render()


def header(results: Results) -> list[str]:
    m, plan = results.machine, results.plan
    framing = "octet-counted" if plan["framing"] == "octet" else "LF"
    return [
        f"- Date: {m['date']}; load average (1/5/15 min) before the run "
        f"{m.get('loadavg_start')}, after it {m.get('loadavg_end')} (the run itself keeps up "
        "to both cores busy)",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory']} memory; kernel {m['kernel']}",
        f"- Python {m['python']}; rsyslog {m['rsyslog']}",
        f"- Pinning: server on cpu {plan['server_cpu']}; generator, driver and sink on cpu "
        f"{plan['gen_cpu']}; {plan['reps']} repetition(s), server order alternating",
        f"- Load: {plan['count']:,} RFC 3164 messages of {plan['size']} bytes over "
        f"{plan['conns']} TCP connections ({framing}), as fast as possible",
        "- Servers: " + "; ".join(f"`{s['name']}`" for s in plan["servers"]),
        "- rsyslog: PLURA's collector config (`relay.node.rsyslog_conf.collector_conf`) "
        "plus PLURA's relay action "
        '(`relay.node.rsyslog_conf.origip_relay_conf("127.0.0.1", SINK, queue="fwd")`): '
        "omfwd over TCP, octet-counted, the `[origip=%fromhost-ip%]` template, a disk-assisted "
        'LinkedList action queue (`queue.filename="fwd" queue.saveOnShutdown="on" '
        'queue.maxDiskSpace="1g" action.resumeRetryCount="-1"`, its files in rsyslog\'s '
        "workDirectory, the session's work dir; queue size and watermarks rsyslog's defaults)",
        "- plura-relay: the same ceelog output plus `[[forward]]` name=up, tcp, "
        'octet-counting, rfc3164-origip, fsync="interval" (every other setting its default)',
    ]


NOTES = [
    "Values: median [min-max] over the repetitions; ratios: median of the server / median of",
    "rsyslog in the same run (above 1 is better for msg/s, below 1 for CPU, memory, disk).",
    "ceelog msg/s: messages in the files / (newest line's mtime - first send). Forwarded msg/s:",
    "messages at the sink / (the sink's read of the last frame - first send): *every message*",
    "only over the repetitions where all arrived without a nudge (see Checks: stuck), *up to a",
    "stall* over all, counting what had arrived when the sink stopped growing for the settle",
    "time (the same figure when nothing got stuck). CPU: utime+stime of the server",
    "from before the first send until every message was written and forwarded. Spool peak:",
    "the bytes of the files in the spool (plura-relay: state/spool/up) or of the action queue",
    "(rsyslog: fwd.*), sampled every 50 ms. Sink CPU: its utime+stime during the step",
    "(it shares cpu 1 with the generator) / the forwarding time. *Without forwarding*: the",
    "same server and load with the forward action / `[[forward]]` left out, in the same run",
    "(sessions alternate); forwarding's cost is the difference of the medians.",
]


def checks_table(results: Results, servers: list[str]) -> list[str]:
    rows = [
        "| server | ceelog lines checked | failed | ceelog missing | at the sink | duplicated "
        "| reordered | stamp/frame errors | sample checked / failed | stuck, reps | still "
        "missing after a nudge | of these, delivered after a restart |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for s in servers:
        recs = [r for r in results.records if r["server"] == s and r["label"] == "relay"]

        def total(key: str, recs: list[dict[str, Any]] = recs) -> str:
            return f"{sum(r.get(key) or 0 for r in recs):,}"

        stuck = [r["fwd_stuck"] for r in recs if r["fwd_stuck"]]
        restarted = sum(
            r["restart_received"] - r["fwd_received"] for r in recs if "restart_received" in r
        )
        rows.append(
            f"| {s} | {total('lines')} | {total('bad')} | {total('missing')} | "
            f"{total('fwd_received')} | {total('fwd_duplicated')} | {total('fwd_reordered')} | "
            f"{total('fwd_bad')} | {total('sample_checked')} / {total('sample_failed')} | "
            f"{sum(stuck):,}, {len(stuck)} | {total('fwd_missing')} | {restarted:,} |"
        )
    return rows


def markdown(results: Results) -> str:
    servers = servers_of(results)
    command = results.plan.get("command", "python -m loadtest relay")
    out = ["# plura-relay load test: relay mode", "", f"`{command}`", "", *header(results)]
    out += ["", "## Summary", "", summary_table(results, servers), "", *NOTES]
    out += ["", "## Checks", "", *checks_table(results, servers), ""]
    out += [
        "Stuck: messages not at the sink when neither output grew for the settle time; then one",
        "more message (a nudge) and the settle time again. Still missing after that: the server",
        "is stopped and started again on its spool/queue to see whether it delivers them.",
        "",
        "The sink checks every frame in C: octet-counted framing, PLURA's `[origip=A]` stamp",
        "present, before the message's tokens, and A equal to the message's own `ip=` (the",
        "sender's address); it counts every stream's distinct, duplicated and reordered numbers.",
        "Sampled frames (every 1000th and each stream's first three) are matched byte by byte:",
        "`<30>Mmm dd hh:mm:ss web-7f9c nginx[PID]: [origip=A] seq=... src=... ip=A run=... PAD$`.",
        "The ceelog files are checked line by line as in RESULTS.md.",
    ]
    examples = [e for r in results.records for e in r.get("examples", [])][:3]
    examples += [e for r in results.records for e in r.get("sample_examples", [])][:3]
    if examples:
        out += ["", "Examples of failed lines:", "", *(f"    {e}" for e in examples)]
    changed = [
        s for s in servers if len({r.get("code") for r in results.records if r["server"] == s}) > 1
    ]
    if changed:
        out += ["", f"**Caution:** the code of {', '.join(changed)} changed during this run."]
    if results.errors:
        out += ["", "## Errors", ""]
        out += [f"- {e['server']} rep {e['rep']}: {e['error']}" for e in results.errors]
    return "\n".join(out) + "\n"


def write_report(results: Results, path: Path) -> None:
    """Render into path, keeping what an existing file has below HAND_WRITTEN."""
    kept = "\n"
    if path.exists():
        _, marker, rest = path.read_text().partition(HAND_WRITTEN)
        kept = rest if marker else kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(results) + "\n" + HAND_WRITTEN + kept)
