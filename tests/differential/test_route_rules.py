"""PLURA's rsyslog.d rules against plura-relay's `[[route]]`s, one rule kind at a time.

For each kind, a real rsyslogd runs the RainerScript rule written from PLURA's description (the
CEETemplate default after it, as on PLURA's collectors) and plura-relay runs the equivalent
route; the same messages go to both from two senders over UDP and then TCP, and every file
both write must be byte-identical, timegenerated aside (it is each server's reception time).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relay.node.rsyslog_conf import CEE_TEMPLATE
from tests.differential.replay import TIMEGENERATED_RE
from tests.differential.test_relay_interop import plura_relay, rsyslogd
from tests.rsyslogd import LISTEN_HOST, free_port, read_lines, send

pytestmark = pytest.mark.differential

ROOT = Path(__file__).resolve().parents[2]
APPLIANCE, SERVER = "127.0.0.2", "127.0.0.3"
MESSAGES = [
    b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
    b'<86>Jan  5 10:11:12 host01 sshd[4242]: Accepted "quoted" back\\slash',
    b"<22>Jan  5 10:11:12 mail01 postfix/smtpd[77]: connect from unknown[10.0.0.9]",
    b"<30>Jan  5 10:11:12 host01 NetworkManager[812]: <info> do-add-ip6-address failed",
    b"<14>Jan  5 10:11:12 host01 app hi without a colon",
    b"<30>Jan  5 10:11:12 host01 systemd[1]:Started Session 7 of user root.",
    b"<165>1 2003-10-11T22:14:15.003+09:00 mymachine.example.com evntslog 1234 ID47 "
    b'[exampleSDID@32473 iut="3" eventSource="Application"] An application event',
    b"<13>1 2024-01-05T10:11:12.5Z host02 myapp - - - plain 5424",
    b"<13>Jan  5 10:11:12 host01 app[1]: \xed\x95\x9c\xea\xb8\x80 \tok",
    b"<191>Oct 11 2023 22:14:15 fw01 kernel: year in the stamp",
    b"<13>Feb  9 08:07:06 host01 mail: do-add-ip6-address and Session 7",
]
UNTIMED = [b"<13>hello no timestamp at all", b"<27>  postfix[3]: odd"]
"""Messages without a timestamp: rsyslog's TIMESTAMP is then the reception time."""
WAIT_S = 15.0

PRELUDE = """\
global(net.enableDNS="off" workDirectory="{work}")
module(load="imudp")
module(load="imtcp")
input(type="imudp" port="{port}" address="{host}" ruleset="plura")
input(type="imtcp" port="{port}" address="{host}" ruleset="plura")
{cee}\
template(name="CeeLogFile" type="string" string="{logs}/ceelog-%FROMHOST-IP%.log")
template(name="PlainTemplate" type="string" string="%HOSTNAME% %syslogtag% %msg%\\n")
template(name="PostfixFile" type="string" string="{logs}/postfix-%FROMHOST-IP%.log")
template(name="EtcFile" type="string" string="{logs}/etc-%FROMHOST-IP%.log")
{secui}\
{compact}
ruleset(name="plura") {{
{rules}
  action(type="omfile" dynaFile="CeeLogFile" template="CEETemplate")
}}
"""
SECUI_TEMPLATE = CEE_TEMPLATE.replace('"CEETemplate"', '"SECUiTemplate"').replace(
    'property(name="programname" format="jsonf")',
    'constant(outname="programname" value="SECUi" format="jsonf")',
)
COMPACT_NAMES = (
    "timegenerated", "programname", "hostname", "syslogtag", "pri", "pri-text", "syslogfacility",
    "syslogfacility-text", "syslogseverity", "syslogseverity-text", "msg",
)  # fmt: skip
COMPACT_TEMPLATE = (
    'template(name="CompactTemplate" type="string" string="{\\"ceelog\\":{'
    + ",".join(
        f'\\"{name}\\":\\"%'
        + ("timegenerated:::date-rfc3339" if name == "timegenerated" else f"{name}:::json")
        + '%\\"'
        for name in COMPACT_NAMES
    )
    + '}}\\n")'
)
"""PLURA's older CEE string template, written from its description."""


@dataclass(frozen=True)
class Kind:
    rules: str  # RainerScript in the ruleset, before the CEETemplate default
    routes: str  # plura-relay's [[route]]s
    untimed: bool = True  # also send UNTIMED (not where the traditional format shows them)


KINDS = {
    "set-programname": Kind(
        f"""  if $fromhost-ip == "{APPLIANCE}" then {{
    action(type="omfile" dynaFile="CeeLogFile" template="SECUiTemplate")
    stop
  }}""",
        f"""[[route]]
name = "secui"
file = "ceelog-{{ip}}.log"
template = "ceelog"
set_programname = "SECUi"
[route.match]
source_cidrs = ["{APPLIANCE}/32"]
""",
    ),
    "drop": Kind(
        '  if ($msg contains "do-add-ip6-address" or $msg contains "Session 7") then stop',
        """[[route]]
name = "noise"
action = "drop"
[route.match]
msg_contains = ["do-add-ip6-address", "Session 7"]
""",
    ),
    "drop-with-header-condition": Kind(
        '  if ($syslogtag contains "mail" and $msg contains "do-add-ip6-address") then stop',
        """[[route]]
name = "noise"
action = "drop"
[route.match]
syslogtag_contains = "mail"
msg_contains = ["do-add-ip6-address"]
""",
    ),
    "plain-per-sender-file": Kind(
        """  if $programname == "postfix" then {
    action(type="omfile" dynaFile="PostfixFile" template="PlainTemplate")
    stop
  }""",
        """[[route]]
name = "postfix"
file = "postfix-{ip}.log"
template = "plain"
[route.match]
programname_equals = "postfix"
""",
    ),
    "traditional": Kind(
        '  action(type="omfile" dynaFile="EtcFile" template="RSYSLOG_TraditionalFileFormat")',
        """[[route]]
name = "etc"
file = "etc-{ip}.log"
template = "traditional"
stop = false
""",
        untimed=False,
    ),
    "ceelog-compact": Kind(
        '  action(type="omfile" file="{logs}/compact.log" template="CompactTemplate")',
        """[[route]]
name = "compact"
file = "compact.log"
template = "ceelog-compact"
stop = false
""",
    ),
    "else-chain": Kind(
        f"""  if $programname == "postfix" then {{
    action(type="omfile" dynaFile="PostfixFile" template="PlainTemplate")
    stop
  }} else if $fromhost-ip == "{APPLIANCE}" then {{
    action(type="omfile" dynaFile="CeeLogFile" template="SECUiTemplate")
    stop
  }} else if $msg contains "do-add-ip6-address" then {{
    stop
  }} else {{
    action(type="omfile" dynaFile="EtcFile" template="RSYSLOG_TraditionalFileFormat")
    stop
  }}""",
        # the shipped example, with the appliance's address replaced by the test's
        (ROOT / "conf" / "per-sender-routes.toml")
        .read_text()
        .replace('"192.0.2.10/32"', f'"{APPLIANCE}/32"'),
        untimed=False,
    ),
}


def rsyslog_conf(kind: Kind, logs: Path, port: int, work: Path) -> str:
    return PRELUDE.format(
        work=work, port=port, host=LISTEN_HOST, logs=logs, cee=CEE_TEMPLATE,
        secui=SECUI_TEMPLATE, compact=COMPACT_TEMPLATE, rules=kind.rules.replace("{logs}", str(logs)),
    )  # fmt: skip


def marker(sender: str) -> bytes:
    return b"<14>Jan  5 10:11:12 marker end: end-of-%s" % sender.encode()


def wait_for_markers(log_dir: Path) -> None:
    """Until each sender's marker (sent last, over TCP) is in some file of `log_dir`."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = b"".join(p.read_bytes() for p in log_dir.glob("*.log")) if log_dir.exists() else b""
        if all(re.search(rb"end-of-%s\b" % s.encode(), found) for s in (APPLIANCE, SERVER)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log_dir}: the markers did not arrive in {WAIT_S} s")
        time.sleep(0.05)


def files(log_dir: Path) -> dict[str, list[bytes]]:
    """Every file's lines, timegenerated masked."""
    return {
        path.name: [TIMEGENERATED_RE.sub(b"<timegenerated>", line) for line in read_lines(path)]
        for path in sorted(log_dir.glob("*.log"))
    }


def send_all(port: int, messages: list[bytes]) -> None:
    for sender in (APPLIANCE, SERVER):
        send("udp", port, sender, messages)
    time.sleep(0.3)  # the datagrams first: UDP and TCP reach a file in the order sent
    for sender in (APPLIANCE, SERVER):
        send("tcp-octet", port, sender, [*messages, marker(sender)])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(KINDS))
def test_route_writes_what_rsyslogs_rule_writes(
    name: str, tmp_path: Path, rsyslogd_binary: str
) -> None:
    kind = KINDS[name]
    messages = MESSAGES + (UNTIMED if kind.untimed else [])
    port, rsyslog_logs = free_port(), tmp_path / "rsyslog-logs"
    rsyslog_logs.mkdir()
    conf = rsyslog_conf(kind, rsyslog_logs, port, tmp_path / "rsyslogd")
    with (
        rsyslogd(rsyslogd_binary, tmp_path / "rsyslogd", conf, port, udp=True),
        plura_relay(tmp_path / "relay", kind.routes) as relay,
    ):
        send_all(port, messages)
        send_all(relay.port, messages)
        wait_for_markers(rsyslog_logs)
        wait_for_markers(relay.log_dir)
        time.sleep(0.3)  # a line too many would come right behind
        expected, got = files(rsyslog_logs), files(relay.log_dir)
    assert list(got) == list(expected)
    for file_name, lines in expected.items():
        assert got[file_name] == lines, file_name
    assert sum(map(len, expected.values())) >= len(messages)  # the kind wrote something
