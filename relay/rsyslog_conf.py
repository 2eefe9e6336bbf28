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
) -> str:
    """A complete rsyslogd config: imudp + imtcp on `port`, ceelog-<FROMHOST-IP>.log in `log_dir`.

    `enable_dns=False` makes the hostname fallback the sender's IP (plura-relay's default);
    rsyslog's own default is a reverse-DNS lookup.
    """
    addr = f' address="{address}"' if address else ""
    work = f'global(workDirectory="{work_dir}")\n' if work_dir else ""
    dns = "on" if enable_dns else "off"
    return (
        f'global(net.enableDNS="{dns}")\n'
        f"{work}"
        'module(load="imudp")\n'
        'module(load="imtcp")\n'
        f'input(type="imudp" port="{port}"{addr})\n'
        f'input(type="imtcp" port="{port}"{addr})\n'
        f"{CEE_TEMPLATE}"
        'template(name="CeeLogFile" type="string" '
        f'string="{log_dir}/ceelog-%FROMHOST-IP%.log")\n'
        'action(type="omfile" dynaFile="CeeLogFile" template="CEETemplate" '
        'fileCreateMode="0640" dirCreateMode="0755")\n'
    )
