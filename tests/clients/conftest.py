"""Fixtures for the client suites: the built husk, the offline test image,
and a leak check (no husk state, no shim, no QEMU) after every test."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("HUSK_BUILD", os.path.join(ROOT, "build"))
HUSK = os.path.join(BUILD, "husk")
HUSK_STATE = "/run/husk"  # clients call husk without --root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import mkimage  # noqa: E402
from husktest import processes_mentioning  # noqa: E402


def pytest_configure(config):
    if not os.access(HUSK, os.X_OK):
        raise pytest.UsageError(f"{HUSK} not built (run scripts/test or meson/ninja first)")


def husk_processes():
    return [(pid, cmd[:120]) for pid, cmd in processes_mentioning("")
            if "husk-shim" in cmd or (cmd.startswith("qemu-system") and HUSK_STATE in cmd)]


def assert_nothing_left(*roots):
    """No shim, no QEMU, and no container state under /run/husk or `roots`
    (the --root a client passes to husk)."""
    deadline = time.time() + 15
    while True:
        procs = husk_processes()
        state = [os.path.join(r, n) for r in (HUSK_STATE, *roots) if os.path.isdir(r) for n in os.listdir(r)]
        if not procs and not state:
            return
        if time.time() > deadline:
            break
        time.sleep(0.3)
    assert not procs, f"leaked processes: {procs}"
    assert not state, f"leaked husk state: {state}"


def run(cmd, check=True, timeout=300, **kw):
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


@pytest.fixture(scope="session")
def rootfs_tar(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("image") / "busybox.tar")
    with open(p, "wb") as f:
        f.write(mkimage.rootfs_tar_bytes())
    return p


@pytest.fixture(scope="session")
def system_tar(rootfs_tar, tmp_path_factory):
    """A system image's rootfs: the busybox image with an init (busybox's,
    /sbin/init, an inittab) and a kernel of its own, husk's vmlinuz in /boot."""
    import io
    import tarfile
    vmlinuz = os.path.join(os.path.dirname(HUSK), "rootfs-builder", "vmlinuz")
    out = str(tmp_path_factory.mktemp("system") / "system.tar")
    shutil.copy(rootfs_tar, out)
    with tarfile.open(out, "a") as tar:
        def add(name, data=None, kind=tarfile.REGTYPE, link="", mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname, ti.mode = kind, link, mode
            if data is None:
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
        add("sbin", kind=tarfile.DIRTYPE, mode=0o755)
        add("sbin/init", kind=tarfile.SYMTYPE, link="../bin/busybox")
        add("boot", kind=tarfile.DIRTYPE, mode=0o755)
        with open(vmlinuz, "rb") as f:
            add("boot/vmlinuz", f.read())
        add("etc/inittab", b"::sysinit:/bin/echo busybox init: up\n::respawn:/bin/sleep 100000\n"
                           b"::shutdown:/bin/echo busybox init: shutting down\n")
    return out


def have(binary):
    return shutil.which(binary) is not None


def wait_for(pred, timeout=60, what=""):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def in_tty(cmd, timeout=120, input=None):
    """Run `cmd` (a list) on a fresh terminal (script(1)): returns its
    status and what the terminal showed."""
    import shlex
    r = subprocess.run(["script", "-qec", shlex.join(cmd), "/dev/null"], capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.replace(b"\r", b"")


def daemon(cmd, ready, log_path, timeout=90):
    """Start a daemon (cmd) and wait until ready() is true; None (with the
    log's tail) if it never gets there."""
    log = open(log_path, "wb")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.poll() is not None:
            break
        if ready():
            return p
        time.sleep(0.5)
    stop_daemon(p)
    return None


def stop_daemon(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# busybox httpd serving one page: what the port-publishing tests fetch.
WEB = "mkdir -p /www && echo hello-from-husk > /www/index.html && exec httpd -f -p 80 -h /www"


def http_get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except OSError:
        return b""


def check_published_web(client, name, port, info):
    """A container serving WEB behind `-p port:80`: the page arrives over
    the published port; in the guest, eth0 has the MAC and address the
    client reports (`info` is its inspect output), and resolv.conf, hosts
    and hostname are the files the client wrote."""
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/") == b"hello-from-husk\n", timeout=90,
             what="the published port")
    net = info()["NetworkSettings"]
    r = client("exec", name, "sh", "-c", "cat /sys/class/net/eth0/address; ip -o -4 addr show eth0")
    mac, addr = r.stdout.decode().split("\n")[:2]
    assert mac == net["MacAddress"] and f"inet {net['IPAddress']}/" in addr, (r.stdout, net)
    for path, key in (("/etc/resolv.conf", "ResolvConfPath"), ("/etc/hosts", "HostsPath"),
                      ("/etc/hostname", "HostnamePath")):
        with open(info()[key], "rb") as f:
            assert client("exec", name, "cat", path).stdout == f.read(), path
    return net
