"""The results: Markdown tables (median [min-max] over repetitions, ratios to rsyslog), a plot."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loadtest.driver import Results

REFERENCE = "rsyslog"
LOSS_LIMIT_PCT = 0.1
MIB = 2**20


def servers_of(results: Results) -> list[str]:
    return [s["name"] for s in results.plan["servers"]]


def pick(
    results: Results, server: str, label: str, key: str, rate: int | None = None
) -> list[float]:
    return [
        r[key]
        for r in results.records
        if r["server"] == server and r["label"] == label and (rate is None or r["rate"] == rate)
        and r.get(key) is not None
    ]  # fmt: skip


def getter(
    results: Results, label: str, key: str, rate: int | None = None
) -> Callable[[str], list[float]]:
    """server -> that figure's values over the repetitions."""
    return lambda server: pick(results, server, label, key, rate)


def cell(values: list[float], fmt: Callable[[float], str]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med)
    return f"{fmt(med)} [{fmt(min(values))}-{fmt(max(values))}]"


def ratio(values: list[float], reference: list[float]) -> str:
    if not values or not reference or statistics.median(reference) == 0:
        return "-"
    return f"{statistics.median(values) / statistics.median(reference):.2f}"


def max_clean_rate(results: Results, server: str) -> list[float]:
    """Per repetition: the highest offered UDP rate that lost less than 0.1 % (0: none did)."""
    out = []
    for rep in sorted({r["rep"] for r in results.records if r["server"] == server}):
        steps = [
            (r["rate"], 100.0 - r["recv_pct"])
            for r in results.records
            if r["server"] == server and r["rep"] == rep and r["label"] == "udp"
        ]
        if steps:
            out.append(float(max([rate for rate, loss in steps if loss < LOSS_LIMIT_PCT] or [0])))
    return out


def written_rate(record: dict[str, Any]) -> float | None:
    """Messages written per second of sending: what the server kept up with (at an offered rate
    above what one core takes, its saturation rate)."""
    if not record.get("sent") or not record.get("achieved_rate"):
        return None
    return float(record["received"]) * record["achieved_rate"] / record["sent"]


def saturation(results: Results, server: str) -> list[float]:
    """Per repetition: the most messages per second written at any offered UDP rate."""
    out = []
    for rep in sorted({r["rep"] for r in results.records if r["server"] == server}):
        rates = [
            written_rate(r)
            for r in results.records
            if r["server"] == server and r["rep"] == rep and r["label"] == "udp"
        ]
        if any(rate is not None for rate in rates):
            out.append(max(rate for rate in rates if rate is not None))
    return out


def integer(x: float) -> str:
    return f"{x:,.0f}"


def two(x: float) -> str:
    return f"{x:.2f}"


def mib(x: float) -> str:
    return f"{x / MIB:.1f}"


class Table:
    """A Markdown table: one row per figure, one column per server, then the ratio columns."""

    def __init__(self, first: str, servers: list[str], *, ratios: bool = True) -> None:
        self.servers = servers
        self.others = [s for s in servers if s != REFERENCE and REFERENCE in servers and ratios]
        head = [first, *servers, *(f"{s} / {REFERENCE}" for s in self.others)]
        self.rows = [head, ["---"] + ["--:"] * (len(head) - 1)]

    def add(
        self, name: str, get: Callable[[str], list[float]], fmt: Callable[[float], str]
    ) -> None:
        values = {s: get(s) for s in self.servers}
        ref = values.get(REFERENCE, [])
        row = [name, *(cell(values[s], fmt) for s in self.servers)]
        self.rows.append(row + [ratio(values[s], ref) for s in self.others])

    def render(self) -> str:
        return "\n".join("| " + " | ".join(r) + " |" for r in self.rows)


def markdown(results: Results, plot_name: str | None) -> str:
    plan, servers = results.plan, servers_of(results)
    out = ["# plura-relay load test: results", ""]
    out += machine_lines(results)
    out += ["", "## Summary", "", summary_table(results, servers).render(), ""]
    out += [
        "Values: median [min-max] over the repetitions. Ratios: median of the server / median",
        f"of {REFERENCE}, measured in the same run: above 1 is better for msg/s and rates,",
        "below 1 is better for CPU, memory and descriptors. TCP msg/s: received messages /",
        "(last line on disk - first send); CPU: utime+stime of the server's process tree during",
        "the step, its drain included. Highest rate with < 0.1 % loss: per repetition, the",
        "highest offered rate that lost less than that (see the sweep for the rates below it).",
    ]
    if plan["udp_rates"]:
        out += ["", "## UDP sweep", ""]
        if plot_name:
            out += [f"![received % against offered rate]({plot_name})", ""]
        out += udp_tables(results, servers)
    out += ["", "## Checks of every line", "", *check_lines(results, servers)]
    changed = [s for s in servers if len({r.get("code") for r in _records(results, s)}) > 1]
    if changed:
        out += ["", f"**Caution:** the code of {', '.join(changed)} changed during this run."]
    if results.errors:
        out += ["", "## Errors", ""]
        out += [
            f"- {e['server']} rep {e['rep']} {e['session']}: {e['error']}" for e in results.errors
        ]
    return "\n".join(out) + "\n"


def machine_lines(results: Results) -> list[str]:
    m, plan = results.machine, results.plan
    gso = {r.get("gso") for r in results.records if r["label"] == "udp"}
    generator = (
        "UDP GSO (UDP_SEGMENT)" if gso == {True} else "sendmmsg" if gso == {False} else "mixed"
    )
    return [
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores, {m['memory']} memory; kernel {m['kernel']}",
        f"- Python {m['python']}; rsyslog {m['rsyslog']}; {m['sysctl']}",
        f"- Pinning: server on cpu {plan['server_cpu']}, load generator (and driver) on cpu "
        f"{plan['gen_cpu']}; {plan['reps']} repetition(s)",
        f"- Load: {plan['sources']} sources (127.0.0.2 on), {plan['size']}-byte RFC 3164 messages;"
        f" TCP {plan['tcp_count']:,} msgs over {plan['tcp_conns']} connections; UDP "
        f"{plan['udp_seconds']:g} s per offered rate via {generator}; "
        f"{plan['many_sources']:,} sources x {plan['many_per_source']} msgs for memory",
        "- Servers: " + "; ".join(f"`{s['name']}`" for s in plan["servers"]),
        *(
            [
                "- `plura-relay @REV`: plura-relay as of commit REV (`--plura-tree`, a worktree of"
                " it), started the same way in the same run: a before/after"
            ]
            if any(" @" in s["name"] for s in plan["servers"])
            else []
        ),
        *([f"- Command: `{m['command']}`"] if m.get("command") else []),
        "- rsyslog runs PLURA's collector config (`relay.node.rsyslog_conf.collector_conf`: imudp +"
        " imtcp, CEETemplate, dynaFile ceelog-%FROMHOST-IP%.log), defaults otherwise",
    ]


def summary_table(results: Results, servers: list[str]) -> Table:
    plan = results.plan
    t = Table("figure", servers)
    for label, name in (("tcp-lf", "LF framing"), ("tcp-octet", "octet-counted")):
        t.add(f"TCP {name}: msg/s", getter(results, label, "msgs_per_s"), integer)
    for label, name in (("tcp-lf", "LF"), ("tcp-octet", "octet-counted")):
        t.add(f"TCP {name}: server CPU s per 1M msgs", getter(results, label, "cpu_per_1m"), two)
    if plan["udp_rates"]:
        t.add(
            f"UDP: highest offered msg/s with < {LOSS_LIMIT_PCT} % loss",
            lambda s: max_clean_rate(results, s), integer,
        )  # fmt: skip
        t.add(
            "UDP: saturation, most msg/s written at any offered rate",
            lambda s: saturation(results, s), integer,
        )  # fmt: skip
    n = f"{plan['many_sources']:,}"
    t.add("RSS idle (MiB)", getter(results, "many-sources", "rss_idle"), mib)
    t.add(f"RSS with {n} sources (MiB)", getter(results, "many-sources", "rss"), mib)
    t.add("open fds idle", getter(results, "many-sources", "fds_idle"), integer)
    t.add(f"open fds with {n} sources", getter(results, "many-sources", "fds"), integer)
    t.add(f"{n} sources: received %", getter(results, "many-sources", "recv_pct"), two)
    if plan["udp5424_rate"]:
        rate = integer(plan["udp5424_rate"])
        t.add(
            f"UDP RFC 5424 at {rate} msg/s: received %",
            getter(results, "udp-5424", "recv_pct"),
            two,
        )
    t.add("threads at start", getter(results, "many-sources", "threads"), integer)
    return t


def udp_tables(results: Results, servers: list[str]) -> list[str]:
    rates = results.plan["udp_rates"]
    out = []
    figures = (
        ("received % of sent", "recv_pct", two),
        ("kernel receive-buffer drops on the server's socket, % of sent", "drop_pct", two),
        ("server CPU s per 1M received", "cpu_per_1m", two),
    )
    for title, key, fmt in figures:
        t = Table("offered msg/s", servers)
        for rate in rates:
            t.add(integer(rate), getter(results, "udp", key, rate), fmt)
        out += [f"### UDP: {title}", "", t.render(), ""]
    written = Table("offered msg/s", servers)
    for rate in rates:
        written.add(
            integer(rate),
            lambda s, rate=rate: [
                w
                for r in results.records
                if r["server"] == s and r["label"] == "udp" and r["rate"] == rate
                and (w := written_rate(r)) is not None
            ],
            integer,
        )  # fmt: skip
    out += ["### UDP: messages written per second of sending", "", written.render(), ""]
    achieved = Table("offered msg/s", servers, ratios=False)
    for rate in rates:
        achieved.add(integer(rate), getter(results, "udp", "achieved_rate", rate), integer)
    out += ["### UDP: rate the generator achieved", "", achieved.render()]
    return out


def check_lines(results: Results, servers: list[str]) -> list[str]:
    rows = [
        "| server | lines checked | failed checks | TCP missing | duplicated | reordered"
        " | generator errors |",
        "| --- | --: | --- | --: | --: | --: | --: |",
    ]
    examples = []
    for s in servers:
        recs = [r for r in results.records if r["server"] == s]
        failed: dict[str, int] = {}
        for r in recs:
            for k, v in r["bad_lines"].items():
                failed[k] = failed.get(k, 0) + v
        bad = ", ".join(f"{k}={v}" for k, v in failed.items() if v) or "none"
        tcp_missing = sum(r["missing"] for r in recs if r["label"].startswith("tcp"))
        counts = " | ".join(_sum(recs, k) for k in ("duplicated", "reordered", "gen_errors"))
        rows.append(f"| {s} | {_sum(recs, 'lines')} | {bad} | {tcp_missing:,} | {counts} |")
        examples += [f"    {s}: {e}" for r in recs for e in r["examples"]][:3]
    text = [
        *rows,
        "",
        "Every line is checked: JSON, rsyslog's exact CEETemplate layout, the eleven fields and",
        "their values (those rsyslog gives these messages, RFC 3164 and RFC 5424), the message",
        "body (numbering, padding, end marker) and the source address against the file name.",
    ]
    if examples:
        text += ["", "Examples of failed lines:", "", *examples]
    return text


def _records(results: Results, server: str) -> list[dict[str, Any]]:
    return [r for r in results.records if r["server"] == server]


def _sum(recs: Iterable[dict[str, Any]], key: str) -> str:
    return f"{sum(r.get(key) or 0 for r in recs):,}"


def plot(results: Results, path: Path) -> bool:
    """received % against offered UDP rate, one line per server (min-max as error bars)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rates = results.plan["udp_rates"]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    drawn = False
    for server in servers_of(results):
        xs, ys, lo, hi = [], [], [], []
        for rate in rates:
            vals = pick(results, server, "udp", "recv_pct", rate)
            if vals:
                med = statistics.median(vals)
                xs.append(rate / 1000)
                ys.append(med)
                lo.append(med - min(vals))
                hi.append(max(vals) - med)
        if xs:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=server)
            drawn = True
    if not drawn:
        plt.close(fig)
        return False
    plan = results.plan
    ax.set_xlabel("offered UDP rate (thousand msg/s)")
    ax.set_ylabel("received % of sent")
    ax.set_title(
        f"UDP: {plan['sources']} sources, {plan['size']}-byte messages, server on one core\n"
        f"median and min-max of {plan['reps']} runs; {results.machine['date']}",
        fontsize=10,
    )
    ax.axhline(100 - LOSS_LIMIT_PCT, color="grey", linestyle=":", linewidth=1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(results: Results, md_path: Path, png_path: Path | None) -> list[str]:
    """Write the Markdown (and the plot, if matplotlib is installed); notes for the caller."""
    notes = []
    plotted = False
    if png_path is not None and results.plan["udp_rates"]:
        plotted = plot(results, png_path)
        if not plotted:
            notes.append("matplotlib is not installed: no plot (pip install matplotlib)")
    name = png_path.name if plotted and png_path else None
    if name and png_path and png_path.parent != md_path.parent:
        name = str(png_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(results, name))
    return notes
