"""python -m loadtest: plura-relay beside rsyslog under load (run, smoke, gen, verify, report).

  run     the full side-by-side measurement; writes loadtest/RESULTS.md, loadtest/udp-sweep.png
          and the raw records in loadtest/out/results-*.json (takes 10-20 minutes)
  smoke   the same code paths with tiny counts in well under a minute, no thresholds; exits
          non-zero if the harness is broken (a step verified no line, a server failed, or
          rsyslog's output failed a check)
  relay   relay mode: rsyslog (omfwd + disk-assisted queue) beside plura-relay ([[forward]]
          + spool), both forwarding every message to a sink; writes loadtest/RELAY-RESULTS.md
          (a few minutes; --smoke: seconds, no thresholds)
  gen     run the load generator by hand against a server you started
  verify  count and check the ceelog files of a directory
  report  re-render RESULTS.md and the plot from a results-*.json

Only loopback traffic: servers listen on 127.0.0.1, sources are 127.0.0.2.. and 127.1.x.y.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from loadtest import driver, forwarding, forwarding_report, gen, report, verify
from loadtest.servers import (
    ServerSpec,
    build_mypyc_tree,
    free_port,
    parse_servers,
    plura_relay_available,
)

HERE = Path(__file__).resolve().parent


def rates(text: str) -> tuple[int, ...]:
    """'20k,50k,1.5m' -> (20000, 50000, 1500000)."""
    out = []
    for part in filter(None, text.replace(" ", "").split(",")):
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1].lower(), 1)
        out.append(int(float(part.rstrip("kKmM")) * scale))
    return tuple(out)


def count(text: str) -> int:
    return rates(text)[0]


def add_plan_options(p: argparse.ArgumentParser, defaults: driver.Plan) -> None:
    d = defaults
    p.add_argument(
        "--servers",
        default="rsyslog,plura-relay",
        help="comma-separated: rsyslog, plura-relay (default: %(default)s)",
    )
    p.add_argument(
        "--plura-args",
        action="append",
        default=[],
        metavar="ARGS",
        help="add a plura-relay variant with these extra arguments, e.g. "
        '"--workers 2" (repeatable)',
    )
    p.add_argument(
        "--rsyslog-args",
        action="append",
        default=[],
        metavar="ARGS",
        help='add an rsyslog variant: "threads=N rcvbuf=SIZE" (imudp\'s threads and '
        'rcvbufSize, e.g. "threads=2 rcvbuf=4m"; repeatable)',
    )
    p.add_argument(
        "--plura-tree",
        action="append",
        default=[],
        metavar="DIR",
        help="add plura-relay run from another checkout (e.g. `git worktree add --detach DIR "
        "REV`): before and after in one run (repeatable)",
    )
    p.add_argument(
        "--plura-mypyc",
        action="store_true",
        help="add this checkout's plura-relay built with mypyc (PLURA_RELAY_MYPYC=1, as the "
        "container image is built)",
    )
    p.add_argument("--reps", type=int, default=d.reps, help="repetitions of every figure")
    p.add_argument("--sources", type=int, default=d.sources, help="UDP/TCP source addresses")
    p.add_argument("--size", type=int, default=d.size, help="message bytes (framing excluded)")
    p.add_argument(
        "--tcp-count", type=count, default=d.tcp_count, help="TCP LF messages (0 skips the step)"
    )
    p.add_argument(
        "--tcp-octet-count",
        type=count,
        default=d.tcp_octet_count,
        help="TCP octet-counted messages (0 skips)",
    )
    p.add_argument("--tcp-conns", type=int, default=d.tcp_conns, help="TCP connections")
    p.add_argument(
        "--udp-rates",
        type=rates,
        default=d.udp_rates,
        help="offered UDP rates, e.g. 20k,50k,100k (empty skips the sweep)",
    )
    p.add_argument(
        "--udp-seconds", type=float, default=d.udp_seconds, help="seconds per offered UDP rate"
    )
    p.add_argument(
        "--udp5424-rate",
        type=count,
        default=d.udp5424_rate,
        help="rate of the short RFC 5424 UDP step (0 skips)",
    )
    p.add_argument(
        "--many-sources",
        type=count,
        default=d.many_sources,
        help="distinct source addresses for the memory figure (0 skips)",
    )
    p.add_argument("--many-per-source", type=int, default=d.many_per_source)
    p.add_argument(
        "--port", type=int, default=d.port, help="UDP+TCP port on 127.0.0.1 (0: a free one)"
    )
    p.add_argument("--server-cpu", default=d.server_cpu, help="taskset CPU list of the server")
    p.add_argument(
        "--gen-cpu",
        default=d.gen_cpu,
        help="CPU of the generator and the driver ('' disables pinning)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=d.settle_s,
        help="a step ends when the line count stopped growing this long",
    )
    p.add_argument(
        "--max-wait", type=float, default=d.max_wait_s, help="bound on waiting for a step's lines"
    )
    p.add_argument(
        "--gso",
        choices=("auto", "on", "off"),
        default=d.gso,
        help="UDP GSO in the generator (auto: use it if the kernel takes it)",
    )
    p.add_argument("--out-dir", type=Path, default=d.out_dir, help="scratch and raw results")
    p.add_argument("--keep-output", action="store_true", help="keep the servers' ceelog files")


def pinning(args: argparse.Namespace) -> bool:
    """Server and generator on their own CPUs: two or more CPUs, and --gen-cpu not ''."""
    pinned = bool(args.gen_cpu) and (os.cpu_count() or 1) >= 2
    if not pinned:
        logging.warning("fewer than 2 CPUs or pinning disabled: server and generator share CPUs")
    return pinned


def plan_from(args: argparse.Namespace, specs: list[ServerSpec]) -> driver.Plan:
    pinned = pinning(args)
    return driver.Plan(
        servers=tuple(specs), reps=args.reps, sources=args.sources, size=args.size,
        tcp_count=args.tcp_count, tcp_octet_count=args.tcp_octet_count,
        tcp_conns=args.tcp_conns, udp_rates=args.udp_rates, udp_seconds=args.udp_seconds,
        udp5424_rate=args.udp5424_rate, many_sources=args.many_sources,
        many_per_source=args.many_per_source, port=args.port or free_port(),
        server_cpu=args.server_cpu if pinned else None,
        gen_cpu=args.gen_cpu if pinned else None, settle_s=args.settle,
        max_wait_s=args.max_wait, gso=args.gso, out_dir=args.out_dir,
        keep_output=args.keep_output,
    )  # fmt: skip


def cmd_run(args: argparse.Namespace) -> int:
    specs = parse_servers(args.servers, args.plura_args, args.rsyslog_args, args.plura_tree)
    if args.plura_mypyc:
        specs.append(build_mypyc_tree(args.out_dir))
    plan = plan_from(args, specs)
    results = driver.run_plan(plan)
    raw = plan.out_dir / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    driver.save_results(results, raw)
    for note in report.write_report(results, args.results, args.plot):
        logging.warning("%s", note)
    logging.info("wrote %s, %s and %s", args.results, args.plot, raw)
    return 1 if results.errors else 0


SMOKE = {
    "reps": 1, "tcp_count": 2000, "tcp_octet_count": 2000, "tcp_conns": 2,
    "udp_rates": (2000, 5000), "udp_seconds": 1.0, "udp5424_rate": 1000,
    "udp5424_seconds": 0.5, "many_sources": 200, "many_per_source": 2, "many_rate": 5000,
    "settle_s": 1.0, "max_wait_s": 10.0,
}  # fmt: skip


def cmd_smoke(args: argparse.Namespace) -> int:
    names = args.servers
    if names == "auto":
        names = "rsyslog,plura-relay" if plura_relay_available() else "rsyslog"
        if "plura-relay" not in names:
            logging.warning("python -m relay serve does not work yet: smoke runs rsyslog only")
    specs = parse_servers(names, args.plura_args)
    pinned = (os.cpu_count() or 1) >= 2
    plan = driver.Plan(
        servers=tuple(specs), port=args.port or free_port(), out_dir=args.out_dir,
        server_cpu="0" if pinned else None, gen_cpu="1" if pinned else None,
        **SMOKE,  # type: ignore[arg-type]
    )  # fmt: skip
    t0 = time.monotonic()
    results = driver.run_plan(plan)
    driver.save_results(results, plan.out_dir / "results.json")
    for note in report.write_report(
        results, plan.out_dir / "RESULTS.md", plan.out_dir / "udp-sweep.png"
    ):
        print("note:", note)
    problems = smoke_problems(results, specs)
    for rec in results.records:
        print(f"{rec['server']:<24} {driver.describe(rec)}")
    print(
        f"smoke: {len(results.records)} steps in {time.monotonic() - t0:.1f} s; "
        f"report in {plan.out_dir / 'RESULTS.md'}"
    )
    for p in problems:
        print("FAIL:", p)
    print("smoke:", "FAILED" if problems else "ok")
    return 1 if problems else 0


def smoke_problems(results: driver.Results, specs: list[ServerSpec]) -> list[str]:
    problems = [f"{e['server']} {e['session']}: {e['error']}" for e in results.errors]
    for spec in specs:
        recs = [r for r in results.records if r["server"] == spec.name]
        if not recs and not results.errors:
            problems.append(f"{spec.name}: no step ran")
        for r in recs:
            if r["lines"] == 0 or r["received"] == 0:
                problems.append(f"{spec.name} {r['step']}: the verifier found no line")
            if spec.kind == "rsyslog" and r["bad"]:
                problems.append(
                    f"rsyslog {r['step']}: {r['bad']} lines failed checks "
                    f"(the verifier or generator is wrong): {r['examples'][:1]}"
                )
            if spec.kind == "rsyslog" and r["label"].startswith("tcp") and r["missing"]:
                problems.append(f"rsyslog {r['step']}: {r['missing']} TCP messages missing")
    return problems


def relay_plan_from(args: argparse.Namespace) -> forwarding.RelayPlan:
    specs = parse_servers(args.servers, args.plura_args)
    pinned = pinning(args)
    plan = forwarding.RelayPlan(
        servers=tuple(specs), reps=args.reps, count=args.count, conns=args.conns,
        framing=args.framing, port=args.port or free_port(),
        server_cpu=args.server_cpu if pinned else None,
        gen_cpu=args.gen_cpu if pinned else None,
        sink_cpu=(args.sink_cpu or None) if pinned else None, settle_s=args.settle,
        max_wait_s=args.max_wait, keep_output=args.keep_output, baseline=args.baseline,
        out_dir=args.out_dir or driver.OUT_DIR / ("relay-smoke" if args.smoke else "relay"),
    )  # fmt: skip
    return replace(plan, **forwarding.SMOKE) if args.smoke else plan  # type: ignore[arg-type]


def cmd_relay(args: argparse.Namespace) -> int:
    if args.from_json:
        forwarding_report.write_report(driver.load_results(args.from_json), args.results)
        return 0
    plan = relay_plan_from(args)
    t0 = time.monotonic()
    results = forwarding.run_plan(plan)
    argv = sys.argv[1:] if args.argv is None else args.argv
    results.plan["command"] = shlex.join(["python", "-m", "loadtest", *argv])
    raw = plan.out_dir / f"relay-results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    driver.save_results(results, raw)
    md = plan.out_dir / "RELAY-RESULTS.md" if args.smoke else args.results
    forwarding_report.write_report(results, md)
    for rec in results.records:
        print(f"{rec['server']:<24} {forwarding.describe(rec)}")
    problems = forwarding.smoke_problems(results, [s.name for s in plan.servers])
    print(f"relay: {len(results.records)} sessions in {time.monotonic() - t0:.1f} s; {md}, {raw}")
    for problem in problems:
        print("FAIL:", problem)
    if args.smoke:
        print("relay smoke:", "FAILED" if problems else "ok")
        return 1 if problems else 0
    return 1 if results.errors else 0


def cmd_gen(args: argparse.Namespace) -> int:
    if args.many:
        summary = gen.send_many_sources(
            args.port,
            args.run,
            sources=args.many,
            per_source=args.per_source,
            rate=args.rate or 10_000,
            size=args.size,
            host=args.host,
        )
    else:
        load = gen.Load(
            proto=args.proto, port=args.port, run=args.run, host=args.host, rate=args.rate,
            duration_s=args.duration, count=args.count, conns=args.conns, sources=args.sources,
            src_base=args.src_base, framing=args.framing, fmt=args.format, size=args.size,
            gso=args.gso,
        )  # fmt: skip
        exe = gen.build_loadgen(args.out_dir / "bin")
        summary = gen.run_load(exe, load, cpu=args.cpu)
    if args.sent:
        with open(args.sent, "a") as fh:
            fh.write(json.dumps(summary) + "\n")
    if not args.streams:
        del summary["streams"]
    print(json.dumps(summary, indent=1))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    return verify.verify_dir(args.dir, args.sent, per_source=args.per_source, json_path=args.json)


def cmd_report(args: argparse.Namespace) -> int:
    results = driver.load_results(args.json)
    for note in report.write_report(results, args.results, args.plot):
        logging.warning("%s", note)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="full side-by-side measurement -> RESULTS.md + plot",
        description=driver.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_plan_options(run, driver.Plan(servers=()))
    run.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    run.add_argument("--plot", type=Path, default=HERE / "udp-sweep.png")
    run.set_defaults(func=cmd_run)

    smoke = sub.add_parser("smoke", help="seconds-long check that the harness works (CI)")
    smoke.add_argument(
        "--servers",
        default="auto",
        help="default: rsyslog, plus plura-relay if `python -m relay serve` works",
    )
    smoke.add_argument("--plura-args", action="append", default=[], metavar="ARGS")
    smoke.add_argument("--port", type=int, default=0, help="default: a free port")
    smoke.add_argument("--out-dir", type=Path, default=driver.OUT_DIR / "smoke")
    smoke.set_defaults(func=cmd_smoke)

    add_relay_parser(sub)

    g = sub.add_parser("gen", help="run the load generator by hand (prints its summary)")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--host", default="127.0.0.1", help="a 127.0.0.0/8 address")
    g.add_argument("--proto", choices=("udp", "tcp"), default="udp")
    g.add_argument("--rate", type=count, default=10_000, help="UDP msgs/s (0: --count, flat out)")
    g.add_argument("--duration", type=float, default=2.0, help="UDP seconds")
    g.add_argument("--count", type=count, default=0, help="TCP messages (UDP: a cap)")
    g.add_argument("--conns", type=int, default=4)
    g.add_argument("--sources", type=int, default=16)
    g.add_argument("--src-base", default=gen.FIRST_SOURCE)
    g.add_argument("--framing", choices=("lf", "octet"), default="lf")
    g.add_argument("--format", type=int, choices=(3164, 5424), default=3164)
    g.add_argument("--size", type=int, default=200)
    g.add_argument("--run", default="manual", help="tag written into every message")
    g.add_argument("--gso", choices=("auto", "on", "off"), default="auto")
    g.add_argument("--cpu", help="taskset CPU list for the generator")
    g.add_argument(
        "--many",
        type=count,
        default=0,
        help="instead: UDP from this many distinct addresses (127.1.x.y)",
    )
    g.add_argument("--per-source", type=int, default=3, help="with --many")
    g.add_argument("--sent", type=Path, help="append the summary to this JSONL (for verify)")
    g.add_argument("--streams", action="store_true", help="print per-stream counts too")
    g.add_argument("--out-dir", type=Path, default=driver.OUT_DIR, help="where loadgen is built")
    g.set_defaults(func=cmd_gen)

    v = sub.add_parser("verify", help="count and check the ceelog-*.log files of DIR")
    v.add_argument("dir", type=Path)
    v.add_argument("--sent", type=Path, help="generator summaries (JSONL) to count missing")
    v.add_argument("--per-source", action="store_true")
    v.add_argument("--json", type=Path, help="write the full summary here")
    v.set_defaults(func=cmd_verify)

    r = sub.add_parser("report", help="re-render RESULTS.md and the plot from results-*.json")
    r.add_argument("json", type=Path)
    r.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    r.add_argument("--plot", type=Path, default=HERE / "udp-sweep.png")
    r.set_defaults(func=cmd_report)
    return top


def add_relay_parser(sub: Any) -> None:
    d = forwarding.RelayPlan(servers=())
    p = sub.add_parser(
        "relay",
        help="relay mode: rsyslog and plura-relay forwarding to a sink -> RELAY-RESULTS.md",
        description=forwarding.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--servers", default="rsyslog,plura-relay", help="default: %(default)s")
    p.add_argument("--plura-args", action="append", default=[], metavar="ARGS")
    p.add_argument("--reps", type=int, default=d.reps, help="repetitions (default %(default)s)")
    p.add_argument("--count", type=count, default=d.count, help="messages per repetition")
    p.add_argument("--conns", type=int, default=d.conns, help="TCP connections")
    p.add_argument(
        "--framing", choices=("octet", "lf"), default=d.framing,
        help="generator -> server framing (server -> sink is octet-counted)",
    )  # fmt: skip
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--server-cpu", default=d.server_cpu)
    p.add_argument("--gen-cpu", default=d.gen_cpu, help="'' disables pinning")
    p.add_argument("--sink-cpu", default=d.sink_cpu, help="'' leaves the sink unpinned")
    p.add_argument(
        "--no-baseline", dest="baseline", action="store_false",
        help="skip the sessions without forwarding (each server as a plain collector)",
    )  # fmt: skip
    p.add_argument("--settle", type=float, default=d.settle_s)
    p.add_argument("--max-wait", type=float, default=d.max_wait_s)
    p.add_argument("--out-dir", type=Path, help="default: loadtest/out/relay (or relay-smoke)")
    p.add_argument("--keep-output", action="store_true", help="keep the ceelog files")
    p.add_argument("--results", type=Path, default=HERE / "RELAY-RESULTS.md")
    p.add_argument(
        "--smoke", action="store_true",
        help="tiny counts, 1 repetition, report in --out-dir; fails only if the harness is broken",
    )  # fmt: skip
    p.add_argument("--from-json", type=Path, help="only re-render --results from a raw record")
    p.set_defaults(func=cmd_relay)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
