"""rsyslog configuration text: PLURA's collector template, for comparing with rsyslogd.

PLURA's node collector is rsyslog with the CEETemplate below; plura-relay replaces it. Tests and
the load-test driver run a real rsyslogd with exactly this template as the reference.
"""

from __future__ import annotations

CEE_PROPERTIES: tuple[str, ...] = (
    "programname", "hostname", "syslogtag", "pri", "pri-text", "syslogfacility",
    "syslogfacility-text", "syslogseverity", "syslogseverity-text", "msg",
)  # fmt: skip

CEE_TEMPLATE = (
    'template(name="CEETemplate" type="list") {\n'
    '  constant(value="{")\n'
    '  constant(value="\\"ceelog\\": {")\n'
    '  property(name="timegenerated" dateFormat="rfc3339" format="jsonf")\n'
    + "".join(
        f'  constant(value=", ")\n  property(name="{name}" format="jsonf")\n'
        for name in CEE_PROPERTIES
    )
    + '  constant(value="}}\\n")\n'
    "}\n"
)


def collector_conf(
    log_dir: str,
    *,
    port: int = 514,
    address: str = "",
    work_dir: str | None = None,
    enable_dns: bool = False,
    udp_threads: int = 0,
    udp_rcvbuf: str = "",
) -> str:
    """A complete rsyslogd config: imudp + imtcp on `port`, ceelog-<FROMHOST-IP>.log in `log_dir`.

    `enable_dns=False` makes the hostname fallback the sender's IP (plura-relay's default);
    rsyslog's own default is a reverse-DNS lookup. `udp_threads` (imudp's module `threads`) and
    `udp_rcvbuf` (its input `rcvbufSize`, e.g. "4m") tune rsyslog for the load test.
    """
    addr = f' address="{address}"' if address else ""
    work = f'global(workDirectory="{work_dir}")\n' if work_dir else ""
    dns = "on" if enable_dns else "off"
    threads = f' threads="{udp_threads}"' if udp_threads else ""
    rcvbuf = f' rcvbufSize="{udp_rcvbuf}"' if udp_rcvbuf else ""
    return (
        f'global(net.enableDNS="{dns}")\n'
        f"{work}"
        f'module(load="imudp"{threads})\n'
        'module(load="imtcp")\n'
        f'input(type="imudp" port="{port}"{addr}{rcvbuf})\n'
        f'input(type="imtcp" port="{port}"{addr})\n'
        f"{CEE_TEMPLATE}"
        'template(name="CeeLogFile" type="string" '
        f'string="{log_dir}/ceelog-%FROMHOST-IP%.log")\n'
        'action(type="omfile" dynaFile="CeeLogFile" template="CEETemplate" '
        'fileCreateMode="0640" dirCreateMode="0755")\n'
    )


WEBLOG_TEMPLATE = 'template(name="PluraWebLog" type="string" string="%msg%\\n")\n'
"""PLURA's weblog template: the bare msg (rsyslog keeps the space after `nginx:`)."""


def weblog_rule(log_dir: str = "/var/log/plura") -> str:
    """PLURA's web-log rule: a tag containing `nginx` -> weblog.log as `%msg%`, then stop."""
    return (
        'if ($syslogtag contains "nginx") then {\n'
        f'  action(type="omfile" file="{log_dir}/weblog.log" template="PluraWebLog" '
        'fileCreateMode="0640" dirCreateMode="0755")\n'
        "  stop\n"
        "}\n"
    )


# PLURA's relay pattern in rsyslog (MISSION: "Origin IP through NAT"), both ends, as the
# rsyslog.d/ files and tests/differential/test_relay_interop.py use them.

ORIGIP_RELAY_TEMPLATE = (
    "<%PRI%>%TIMESTAMP% %HOSTNAME% %syslogtag% [origip=%fromhost-ip%]%msg:::sp-if-no-1st-sp%%msg%"
)
"""The relay's template. The space after %syslogtag% is needed: after a tag without `:` (`app`,
RFC 5424's `APP[PROCID]`) a stamp touching it would be read as part of the tag."""


def origip_relay_conf(target: str, port: int = 514, *, queue: str = "plura-fwd") -> str:
    """An rsyslog relay: every message to `target` over TCP (octet-counted) with the stamp,
    through a disk-assisted queue (kept across restarts, retried forever)."""
    return (
        f'template(name="PluraOrigipRelay" type="string" string="{ORIGIP_RELAY_TEMPLATE}")\n'
        f'action(type="omfwd" target="{target}" port="{port}" protocol="tcp"\n'
        '       TCP_Framing="octet-counted" template="PluraOrigipRelay"\n'
        f'       queue.type="LinkedList" queue.filename="{queue}" queue.saveOnShutdown="on"\n'
        '       queue.maxDiskSpace="1g" action.resumeRetryCount="-1")\n'
    )


# The collector's rules: a stamp opening msg (after at most the space rsyslog keeps after the
# tag) files the message under that address, with the stamp removed exactly as plura-relay's
# relay/forward/origin.py does (the space before the stamp is kept, one after it dropped); anything
# else goes to the fallback file. POSIX ERE: `[^]]` is "not `]`"; `$` must not be in a
# double-quoted RainerScript string, hence the single quotes.
_ORIGIP_RULES = r"""set $.origip = re_extract($msg, "^ ?\\[origip=([0-9A-Fa-f:.]+)\\]", 0, 1, "");
if $.origip != "" then {
  set $.msg = re_extract($msg, "^( ?)\\[", 0, 1, "")
            & re_extract($msg, '^ ?\\[origip=[^]]+\\] ?(.*)$', 0, 1, "");
  action(type="omfile" dynaFile="PluraOrigipFile" template="PluraOrigipCEETemplate"
         fileCreateMode="0640" dirCreateMode="0755")
} else {
  action(type="omfile" file="LOG_DIR/ceelog-fallback.log" template="CEETemplate"
         fileCreateMode="0640" dirCreateMode="0755")
}
"""
_MSG_PROPERTY = 'property(name="msg" format="jsonf")'


def origip_collector_rules(log_dir: str = "/var/log/plura") -> str:
    """PLURA's collector behind relays: CEETemplate, its copy with the stripped msg, and the
    rules (the inputs are the caller's)."""
    origip_template = CEE_TEMPLATE.replace('"CEETemplate"', '"PluraOrigipCEETemplate"').replace(
        _MSG_PROPERTY, 'property(name="$.msg" format="jsonf" outname="msg")'
    )
    return (
        CEE_TEMPLATE + origip_template + 'template(name="PluraOrigipFile" type="string" '
        f'string="{log_dir}/ceelog-%$.origip%.log")\n' + _ORIGIP_RULES.replace("LOG_DIR", log_dir)
    )
