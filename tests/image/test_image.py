"""The container image: build it with podman (scripts/build-image.sh) and run the server in it.

Needs root and podman (with runc and debootstrap for the local base image). Without them the
tests are skipped; with CI=true what is missing is installed with apt-get, and a machine where
the image still cannot be built or run fails instead.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "plura-relay:test"
UID = 65532
MAX_IMAGE_BYTES = 250 * 1000 * 1000
BUILD_TIMEOUT_S = 900  # a cold build (debootstrap of the base included) takes about a minute
PACKAGES = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
IN_CI = os.environ.get("CI") == "true"

pytestmark = pytest.mark.slow


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"container image test cannot run in CI: {reason}")
    pytest.skip(reason)


def _missing_tools() -> list[str]:
    return [tool for tool in PACKAGES if shutil.which(tool) is None]


def _apt_install(packages: list[str]) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:  # an old or absent package list: update once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return result.stdout[-2000:] + result.stderr[-2000:]


def _ulimits() -> list[str]:
    """podman's default ulimits fail here: nofile no higher than this process may go."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else hard
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=32768:32768"]


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def podman_run(*args: str) -> list[str]:
    """`podman run` with the flags this kind of machine needs (crun fails on its cgroups)."""
    return ["run", "--runtime", "runc", *_ulimits(), *args]


@pytest.fixture(scope="session")
def image() -> str:
    """Builds plura-relay:test once per session (the base image first, when absent)."""
    if os.geteuid() != 0:
        _unavailable("needs root (podman as root, debootstrap)")
    missing = _missing_tools()
    if missing and IN_CI:
        output = _apt_install([PACKAGES[tool] for tool in missing])
        missing = _missing_tools()
        if missing:
            pytest.fail(f"apt-get install {missing} did not install them:\n{output}")
    if missing:
        pytest.skip(f"needs {missing} (apt-get install -y podman runc debootstrap)")
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        _unavailable(f"podman does not work here: {info.stderr[-1000:]}")

    started = time.monotonic()
    try:
        build = subprocess.run(
            [str(ROOT / "scripts" / "build-image.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/build-image.sh took more than {exc.timeout} s")
    assert build.returncode == 0, (
        f"scripts/build-image.sh exited {build.returncode}:\n"
        f"{build.stdout[-5000:]}\n{build.stderr[-5000:]}"
    )
    print(f"\nimage {IMAGE} built in {time.monotonic() - started:.1f} s")
    return IMAGE


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the container shares the host's network)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no free port")


def owned_dir(path: Path) -> Path:
    """A host directory the container's user (uid 65532) may write."""
    path.mkdir(parents=True)
    os.chown(path, UID, UID)
    return path


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    diagnose: Callable[[], str] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{diagnose()}")


def container_logs(cid: str) -> str:
    logs = podman("logs", cid, check=False)
    return logs.stdout + logs.stderr


def is_running(cid: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", cid, check=False)
    return state.stdout.strip() == "true"


@pytest.fixture
def container() -> Iterator[list[str]]:
    """Collects the ids of the containers a test starts; stops and removes them at the end."""
    cids: list[str] = []
    yield cids
    for cid in cids:
        podman("stop", "--time", "10", cid, check=False)
        podman("rm", "--force", cid, check=False)


def start(container: list[str], *args: str) -> str:
    result = podman(*podman_run("-d", *args))
    cid = result.stdout.strip().splitlines()[-1]
    container.append(cid)
    return cid


def wait_listening(cid: str, address: str) -> None:
    def listening() -> bool:
        if not is_running(cid):
            raise AssertionError(f"the server exited:\n{container_logs(cid)}")
        logs = container_logs(cid)
        return f"listening on udp {address}" in logs and f"listening on tcp {address}" in logs

    wait_for(listening, 30, f"the server to listen on {address}", lambda: container_logs(cid))


def metrics_config(image: str, config_dir: Path) -> list[str]:
    """A config moving the server's HTTP endpoint (/healthz, 127.0.0.1:9514 by default) to a free
    port, so that the host's 9514 may be taken; [] while the server has no `[metrics]` yet."""
    port = free_port()
    config_dir.mkdir()
    (config_dir / "test.toml").write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    config_dir.chmod(0o755)
    (config_dir / "test.toml").chmod(0o644)
    mount = ["-v", f"{config_dir}:/etc/plura-relay/test:ro"]
    check = podman(
        *podman_run("--rm", "--network", "none", *mount, image),
        "check-config",
        "/etc/plura-relay/test/test.toml",
        check=False,
    )
    if check.returncode != 0:
        return []
    return [*mount, "-e", f"PLURA_RELAY_HEALTH_URL=http://127.0.0.1:{port}/healthz"]


def health_endpoint_implemented() -> bool:
    return any(
        "/healthz" in path.read_text(encoding="utf-8")
        for path in (ROOT / "relay").rglob("*.py")
        if path.name != "config.py"
    )


# (bytes sent, expected hostname, syslogtag, msg): a distinct hostname per transport.
UDP_MESSAGES = [
    (
        b"<34>Oct 11 22:14:15 udp3164 su: 'su root' failed for lonvick on /dev/pts/8",
        ("udp3164", "su:", " 'su root' failed for lonvick on /dev/pts/8"),
    ),
    (
        b'<165>1 2003-10-11T22:14:15.003Z udp5424.example.com evntslog - ID47 [x@1 a="1"] event',
        ("udp5424.example.com", "evntslog", "event"),
    ),
]
TCP_MESSAGES = [
    (
        b"<13>Jan  5 10:11:12 tcp3164 app[1]: over TCP, LF-framed",
        ("tcp3164", "app[1]:", " over TCP, LF-framed"),
    ),
    (
        b"<14>1 2026-11-26T10:00:00.000Z tcp5424 myapp 42 - - over TCP, octet-counted",
        ("tcp5424", "myapp[42]", "over TCP, octet-counted"),
    ),
]


def send(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for data, _ in UDP_MESSAGES:
            udp.sendto(data, ("127.0.0.1", port))
    lf, octet = TCP_MESSAGES[0][0], TCP_MESSAGES[1][0]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
        tcp.sendall(lf + b"\n" + str(len(octet)).encode() + b" " + octet)


def read_lines(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="surrogateescape")
    return [json.loads(line)["ceelog"] for line in text.splitlines() if line.endswith("}}")]


def test_image_serves_udp_and_tcp_as_non_root(
    image: str, tmp_path: Path, container: list[str]
) -> None:
    out_dir = owned_dir(tmp_path / "out")
    state_dir = owned_dir(tmp_path / "state")
    port = free_port()
    address = f"127.0.0.1:{port}"
    config = metrics_config(image, tmp_path / "conf")
    cid = start(
        container,
        "--network",
        "host",
        "-v",
        f"{out_dir}:/var/log/plura",
        "-v",
        f"{state_dir}:/var/lib/plura-relay",
        *config,
        image,
        "serve",
        *(["--config", "/etc/plura-relay/test/test.toml"] if config else []),
        "--listen",
        address,
        "--log-dir",
        "/var/log/plura",
        "--state-dir",
        "/var/lib/plura-relay",
    )
    wait_listening(cid, address)

    # The server process runs as the image's user: its host pid's uids (no user namespace).
    pid = podman("inspect", "--format", "{{.State.Pid}}", cid).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(UID)] * 4, status
    assert podman("top", cid, "huser").stdout.split()[1:] == [str(UID)]

    send(port)
    expected = {fields for _, fields in UDP_MESSAGES + TCP_MESSAGES}
    log = out_dir / "ceelog-127.0.0.1.log"
    wait_for(
        lambda: len(read_lines(log)) >= len(expected),
        20,
        f"{len(expected)} lines in {log}",
        lambda: f"{read_lines(log)}\n{container_logs(cid)}",
    )
    lines = read_lines(log)
    assert {(x["hostname"], x["syslogtag"], x["msg"]) for x in lines} == expected
    assert len(lines) == len(expected)
    assert log.stat().st_uid == UID

    health = podman("healthcheck", "run", cid, check=False)
    print(f"healthcheck: exit {health.returncode} {health.stdout.strip()}")
    if health_endpoint_implemented() and config:
        assert health.returncode == 0, health.stdout + health.stderr + container_logs(cid)

    # `podman stop` sends SIGTERM: the server drains, saves its registry and exits 0.
    podman("stop", "--time", "20", cid)
    assert podman("inspect", "--format", "{{.State.ExitCode}}", cid).stdout.strip() == "0", (
        container_logs(cid)
    )
    children = json.loads((state_dir / "children.json").read_text())
    assert "127.0.0.1" in json.dumps(children)


# How the image runs on port 514: as its own user (plain `docker run`), and as
# conf/k8s/base/daemonset.yaml runs it (uid 0 holding nothing but NET_BIND_SERVICE,
# no_new_privs, read-only root filesystem).
SECURITY = {
    "image-user": (UID, []),
    "daemonset": (
        0,
        [
            "--user=0",
            "--cap-drop=ALL",
            "--cap-add=NET_BIND_SERVICE",
            "--security-opt=no-new-privileges",
            "--read-only",
        ],
    ),
}


@pytest.mark.parametrize("security", list(SECURITY))
def test_image_binds_port_514(
    image: str, tmp_path: Path, container: list[str], security: str
) -> None:
    """The production port. As uid 65532 through the file capability of the venv's python. In
    its own network namespace with only loopback, so the host's port 514 is not needed."""
    uid, options = SECURITY[security]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    os.chown(out_dir, uid, uid)
    cid = start(
        container,
        "--network",
        "none",
        *options,
        "-v",
        f"{out_dir}:/var/log/plura",
        image,
        "serve",
        "--listen",
        "127.0.0.1:514",
        "--log-dir",
        "/var/log/plura",
        "--state-dir",
        "/tmp",
    )
    wait_listening(cid, "127.0.0.1:514")
    podman("exec", cid, "plura-relay", "send", "127.0.0.1:514", "hello on 514")
    log = out_dir / "ceelog-127.0.0.1.log"
    wait_for(lambda: len(read_lines(log)) >= 1, 20, f"a line in {log}", lambda: container_logs(cid))
    assert [x["msg"] for x in read_lines(log)] == [" hello on 514"]
    assert log.stat().st_uid == uid


def test_image_size(image: str) -> None:
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    print(f"\nimage {image}: {size / 1e6:.1f} MB")
    assert size < MAX_IMAGE_BYTES, f"{size / 1e6:.1f} MB"


def test_image_metadata(image: str) -> None:
    (config,) = json.loads(podman("image", "inspect", image).stdout)
    cfg = config["Config"]
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["Entrypoint"] == ["plura-relay"]
    assert cfg["Cmd"] == ["serve", "--config", "/etc/plura-relay/plura-relay.toml"]
    healthcheck = config.get("Healthcheck") or cfg.get("Healthcheck") or {}
    assert "9514/healthz" in " ".join(healthcheck.get("Test", [])), healthcheck
    # The CA bundle given to pip during the build (a build secret) left nothing in the image.
    found = podman(
        *podman_run("--rm", "--network", "none", "--entrypoint", "sh", image),
        "-c",
        "ls -d /run/secrets/pip-ca /tmp/host-ca.crt 2>/dev/null; env | grep -i PIP_CERT; "
        "plura-relay check-config /etc/plura-relay/plura-relay.toml >/dev/null && echo config-ok",
        check=False,
    )
    assert found.stdout.strip() == "config-ok", found.stdout + found.stderr
    assert "PIP_CERT" not in json.dumps(config["History"])
