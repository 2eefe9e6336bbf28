"""Paths of the deployed files and the real programs the deploy tests run.

A missing program skips its tests with the reason, except on CI (CI=true), where it fails.
"""

from __future__ import annotations

import importlib
import os
import pwd
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from tests.rsyslogd import find_rsyslogd

ROOT = Path(__file__).resolve().parents[2]
RSYSLOG_D = ROOT / "rsyslog.d"
NGINX_CONF = ROOT / "conf" / "nginx"
K8S = ROOT / "conf" / "k8s"


def missing(what: str, install: str) -> NoReturn:
    """Skip the test because `what` is not installed; on CI that is a failure."""
    message = f"{what} not installed: {install}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message, allow_module_level=True)


def find_nginx() -> str | None:
    """$NGINX if set, else PATH, else /usr/sbin/nginx."""
    candidates = [os.environ["NGINX"]] if "NGINX" in os.environ else []
    candidates = candidates or [shutil.which("nginx") or "", "/usr/sbin/nginx"]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="session")
def rsyslogd() -> str:
    binary = find_rsyslogd()
    if binary is None:
        missing("rsyslogd", "apt-get install rsyslog")
    return binary


@pytest.fixture(scope="session")
def nginx() -> str:
    binary = find_nginx()
    if binary is None:
        missing("nginx", "apt-get install nginx")
    return binary


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        missing("kubernetes-validate", "pip install kubernetes-validate")


def write_nginx_conf(directory: Path, includes: list[str]) -> Path:
    """A main nginx.conf like the stock one (`include`s in http {}), every path in `directory`.

    Run it with `nginx -p DIR -e DIR/error.log -c DIR/nginx.conf`: nothing outside is touched.
    """
    temp_paths = "".join(
        f"    {name}_temp_path {directory / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # as root, workers run as root too: they can use the temp paths in a 0700 pytest directory
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"{user}"
        "worker_processes 1;\n"
        f"pid {directory / 'nginx.pid'};\n"
        f"error_log {directory / 'error.log'};\n"
        "events {\n    worker_connections 64;\n}\n"
        "http {\n"
        "    default_type application/octet-stream;\n"
        f"    access_log {directory / 'access.log'};\n"
        f"{temp_paths}" + "".join(f"    include {path};\n" for path in includes) + "}\n"
    )
    return conf


def nginx_command(nginx: str, conf: Path, *args: str) -> list[str]:
    """nginx with prefix, early error log and config all in the config's directory."""
    prefix = conf.parent
    return [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), *args]
