"""Command line: `plura-relay serve | check-config | children | send | status | spool stats`.

Flags become overrides on top of the config file (only flags actually given override).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import click
import msgspec

from relay import __version__
from relay.children.registry import Child, is_active, load_children
from relay.children.registry import format_table as format_children
from relay.config import ConfigError, load_config, parse_address
from relay.message import printable, printable_json
from relay.ops.logs import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="plura-relay")
def main() -> None:
    """plura-relay: syslog receiver and relay for the PLURA SIEM.

    Receives syslog (RFC 3164/5424) over UDP and TCP, writes one ceelog-<source ip>.log per
    sender exactly as PLURA's rsyslog template does, and registers every sender as a child server.
    """


class OperatorError(click.ClickException):
    """Something the operator can fix (config, environment): one line, exit status 2."""

    exit_code = 2


def _load(config: str | None, overrides: dict[str, Any], *, environment: bool = False) -> Any:
    """The config, checked; with `environment`, also against this host (what `serve` needs)."""
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        raise OperatorError(str(exc)) from exc
    if environment:
        from relay.runtime.preflight import check_environment

        try:
            check_environment(cfg)
        except ConfigError as exc:
            raise OperatorError(f"{config}: {exc}" if config else str(exc)) from exc
    return cfg


def _start_error(exc: BaseException) -> str | None:
    """One line for an error of config or environment found while starting, else None."""
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _start_error(exc.exceptions[0])
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        return f"{exc.filename}: {text}" if exc.filename else text
    return None


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option(
    "--listen",
    "-l",
    multiple=True,
    metavar="HOST:PORT",
    help="Address to listen on, UDP and TCP (repeatable; IPv6 as [::1]:514). Default 0.0.0.0:514.",
)
@click.option("--log-dir", type=click.Path(file_okay=False), help="Where ceelog-<ip>.log files go.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Child registry location.")
@click.option("--workers", type=int, help="Worker processes sharing the port (SO_REUSEPORT).")
@click.option(
    "--metrics",
    metavar="HOST:PORT",
    help='/metrics, /healthz and /readyz address (default 127.0.0.1:9514; "" turns it off).',
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Format of own logs.")
def serve(
    config: str | None,
    listen: tuple[str, ...],
    log_dir: str | None,
    state_dir: str | None,
    workers: int | None,
    metrics: str | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Receive syslog and write ceelog files until SIGTERM/SIGINT (SIGHUP reopens files)."""
    given = {
        "listen.addresses": list(listen) or None,
        "output.log_dir": log_dir,
        "state_dir": state_dir,
        "workers": workers,
        "metrics.listen": metrics,
        "log.level": log_level,
        "log.format": log_format,
    }
    cfg = _load(config, {k: v for k, v in given.items() if v is not None}, environment=True)
    setup_logging(cfg.log.level, cfg.log.format)
    from relay.runtime.start import run  # uvloop is only needed by the server

    try:
        run(cfg)
    except (OSError, ConfigError, BaseExceptionGroup) as exc:
        line = _start_error(exc)
        if line is None:
            raise
        raise OperatorError(f"cannot start: {line}") from exc


@main.command(hidden=True)
@click.option("--index", type=int, required=True)
@click.option("--report-fd", type=int, required=True)
@click.option("--socket", "sockets", multiple=True, required=True)
@click.option("--standby", is_flag=True, help="Wait on stdin for the index of the worker to be.")
def worker(index: int, report_fd: int, sockets: tuple[str, ...], standby: bool) -> None:
    """Internal: one worker process of `serve --workers N` (started by the supervisor)."""
    import uvloop

    from relay.runtime.workers import await_role, run_worker, worker_config, worker_sockets

    cfg = worker_config()
    if standby:  # everything is imported: from here on a start takes milliseconds
        index, specs = await_role(list(sockets))
        sockets = tuple(specs)
    setup_logging(cfg.log.level, cfg.log.format, tag=f"worker {index}")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_worker(cfg, worker_sockets(list(sockets)), report_fd, index))


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file: str) -> None:
    """Validate FILE, and what it names on this host (directories, TLS files, the hook command):
    exit 0 if `serve` can use it, else print the key and what was expected and exit 2."""
    cfg = _load(file, {}, environment=True)
    forwards = "".join(f", forward {f.name}: {f.protocol} {f.host}:{f.port}" for f in cfg.forward)
    click.echo(f"{file}: OK ({len(cfg.listen.addresses)} listen address(es), "
               f"log dir {cfg.output.log_dir}{forwards})")  # fmt: skip


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Child registry location.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--url", help="Base URL of the running server's metrics endpoint (default: config).")
def children(config: str | None, state_dir: str | None, as_json: bool, url: str | None) -> None:
    """List the child servers registered so far: as the running server has them now, or, with
    no server answering, as saved in the state dir."""
    cfg = _load(config, {"state_dir": state_dir} if state_dir else {})
    url = url or _metrics_url(cfg)
    found = _children_served(url, cfg.state_dir) if url else None
    if found is None:
        found = load_children(Path(cfg.state_dir))
    inactive_after_s = cfg.children.inactive_after_s
    if as_json:
        now = time.time()
        listed = [
            {**msgspec.structs.asdict(c), "active": is_active(c, now, inactive_after_s)}
            for c in found
        ]
        click.echo(printable_json(msgspec.json.format(msgspec.json.encode(listed)).decode()))
    else:
        click.echo(format_children(found, inactive_after_s=inactive_after_s))  # escaped per field


class _Served(msgspec.Struct):
    state_dir: str
    children: list[Child]


CHILDREN_TIMEOUT_S = 2.0


def _children_served(url: str, state_dir: str) -> list[Child] | None:
    """The running server's registry, if a server answers at `url` for this state dir."""
    from relay.ops.status import fetch_document

    body = fetch_document(url.rstrip("/") + "/children", CHILDREN_TIMEOUT_S)
    if body is None:
        return None
    try:
        served = msgspec.json.decode(body, type=_Served)
    except msgspec.DecodeError:
        return None
    return served.children if served.state_dir == os.path.realpath(state_dir) else None


def _metrics_url(cfg: Any) -> str | None:
    """http://HOST:PORT of the metrics endpoint the config sets (a wildcard: loopback)."""
    if not cfg.metrics.listen:
        return None
    host, port = parse_address(cfg.metrics.listen, 9514)
    host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@main.command()
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--url", help="Base URL of the metrics endpoint (default: from the config).")
def status(config: str | None, url: str | None) -> None:
    """One-screen summary of a running server, read from its /metrics endpoint."""
    from relay.ops.status import fetch_status, format_status

    if url is None:
        url = _metrics_url(_load(config, {}))
        if url is None:
            raise OperatorError("metrics are off in the config ([metrics] listen)")
    try:
        click.echo(_printable_lines(format_status(fetch_status(url))))
    except OSError as exc:
        raise OperatorError(f"cannot reach {url}: {exc}") from exc


@main.group()
def spool() -> None:
    """The disk spools of the [[forward]] targets."""


@spool.command("stats")
@click.option("--config", "-c", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="Where the spools are.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def spool_stats(config: str | None, state_dir: str | None, as_json: bool) -> None:
    """Per target: messages spooled and not yet confirmed delivered, bytes, oldest age."""
    from relay.forward.spool_report import format_report, spool_report

    cfg = _load(config, {"state_dir": state_dir} if state_dir else {})
    report = spool_report(cfg.state_dir, [f.name for f in cfg.forward])
    if as_json:
        rows = [row._asdict() for row in report]
        click.echo(printable_json(msgspec.json.format(msgspec.json.encode(rows)).decode()))
    else:
        click.echo(_printable_lines(format_report(report)))


@main.command("rsyslog-conf")
@click.option("--node-ip", help="The node's pod-network address (cni0's).")
@click.option(
    "--node-ip-env",
    help="Or: the pod's environment variable holding the node's address (status.hostIP), "
    'for plura-relay listening on "${HOST_IP}:514".',
)
@click.option("--port", type=click.IntRange(1, 65535), help="Default 514 (UDP, TCP), 2514 (RELP).")
@click.option("--tcp", is_flag=True, help="TCP with octet counting and a disk queue (default UDP).")
@click.option(
    "--relp",
    is_flag=True,
    help="RELP (omrelp, every message acknowledged once written) with a disk queue; for "
    "plura-relay's listen.relp.",
)
def rsyslog_conf(
    node_ip: str | None, node_ip_env: str | None, port: int | None, tcp: bool, relp: bool
) -> None:
    """Print the rsyslog.d snippet a pod needs to send its syslog to this node."""
    from relay.node.podconf import pod_snippet, pod_snippet_from_env

    if (node_ip is None) == (node_ip_env is None):
        raise click.UsageError("give one of --node-ip and --node-ip-env")
    if tcp and relp:
        raise click.UsageError("give one of --tcp and --relp")
    try:
        if node_ip_env is not None:
            text = pod_snippet_from_env(node_ip_env, tcp=tcp, port=port, relp=relp)
            click.echo(text, nl=False)
            return
        click.echo(pod_snippet(str(node_ip), tcp=tcp, port=port, relp=relp), nl=False)
    except ValueError as exc:
        hint = "--node-ip-env" if node_ip_env is not None else "--node-ip"
        raise click.BadParameter(str(exc), param_hint=hint) from exc


@main.command()
@click.option("--tcp", is_flag=True, help="Send over TCP (default UDP).")
@click.option("--octet-counting", is_flag=True, help="TCP framing `LEN SP MSG` (default LF).")
@click.option("--rfc5424", is_flag=True, help="Build RFC 5424 headers (default RFC 3164).")
@click.option("--raw", is_flag=True, help="Send MESSAGE bytes as given, without a header.")
@click.option("--pri", type=click.IntRange(0, 191), default=13, show_default=True)
@click.option("--hostname", default=socket.gethostname(), show_default=True)
@click.option("--tag", default="plura-relay-send", show_default=True, help="Tag / APP-NAME.")
@click.option("--source", metavar="IP", help="Bind the sending socket to this address.")
@click.argument("target", metavar="HOST:PORT")
@click.argument("message", nargs=-1, required=True)
def send(
    tcp: bool,
    octet_counting: bool,
    rfc5424: bool,
    raw: bool,
    pri: int,
    hostname: str,
    tag: str,
    source: str | None,
    target: str,
    message: tuple[str, ...],
) -> None:
    """Send each MESSAGE as one syslog message to HOST:PORT (a test sender)."""
    try:
        host, port = parse_address(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="HOST:PORT") from exc
    payloads = [
        text.encode() if raw else _build(text, pri=pri, hostname=hostname, tag=tag, rfc5424=rfc5424)
        for text in message
    ]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        if source:
            sock.bind((source, 0))
        if tcp:
            sock.connect((host or "127.0.0.1", port))
            framed = (b"%d %s" % (len(p), p) if octet_counting else p + b"\n" for p in payloads)
            sock.sendall(b"".join(framed))
        else:
            for payload in payloads:
                sock.sendto(payload, (host or "127.0.0.1", port))
    click.echo(f"sent {len(payloads)} message(s) to {target} over {'TCP' if tcp else 'UDP'}",
               err=True)  # fmt: skip


def _build(text: str, *, pri: int, hostname: str, tag: str, rfc5424: bool) -> bytes:
    now = time.time()
    if rfc5424:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
        return f"<{pri}>1 {stamp} {hostname} {tag} - - - {text}".encode()
    local = time.localtime(now)
    stamp = f"{time.strftime('%b', local)} {local.tm_mday:2d} {time.strftime('%H:%M:%S', local)}"
    return f"<{pri}>{stamp} {hostname} {tag}: {text}".encode()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _printable_lines(text: str) -> str:
    """What another process told us (a server's /metrics, a spool's files), shown escaped."""
    return "\n".join(printable(line) for line in text.split("\n"))
