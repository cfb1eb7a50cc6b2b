"""containerd with husk as the runc binary of its runc v2 shim
(`ctr run --runc-binary`, the BinaryName option in a runtime's config).
A private containerd per module: its own root, state and socket."""
import os
import subprocess
import tarfile
import time

import pytest

from conftest import HUSK, assert_nothing_left, daemon, have, in_tty, mkimage, run, stop_daemon, wait_for

pytestmark = pytest.mark.skipif(not have("containerd") or not have("ctr"),
                                reason="containerd is not installed (scripts/deps installs it)")

IMAGE = "husk.test/busybox:latest"
NS = "husk-test"


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    d = tmp_path_factory.mktemp("containerd")
    sock = str(d / "containerd.sock")
    (d / "config.toml").write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
""")

    def ready():
        return os.path.exists(sock) and run(["ctr", "-a", sock, "version"], check=False, timeout=30).returncode == 0
    p = daemon(["containerd", "--config", str(d / "config.toml")], ready, d / "containerd.log")
    if p is None:
        pytest.skip("containerd does not start on this machine: " + (d / "containerd.log").read_text()[-2000:])
    archive = str(d / "image.tar")
    mkimage.oci_archive(archive, IMAGE)
    run(["ctr", "-a", sock, "-n", NS, "image", "import", archive])
    yield sock
    stop_daemon(p)


@pytest.fixture
def ctr(containerd):
    def c(*args, check=False, input=None, timeout=300):
        return run(["ctr", "-a", containerd, "-n", NS] + list(args), check=check, input=input, timeout=timeout)
    c.sock = containerd
    yield c
    for t in c("task", "ls", "-q").stdout.split():
        c("task", "kill", "-s", "SIGKILL", t.decode())
    time.sleep(1)
    for t in c("container", "ls", "-q").stdout.split():
        c("task", "rm", "-f", t.decode())
        c("container", "rm", t.decode())
    # containerd's runc shim calls the runtime with --root /run/containerd/runc/<namespace>.
    assert_nothing_left(f"/run/containerd/runc/{NS}")


def test_run_output_and_exit_code(ctr):
    r = ctr("run", "--rm", "--runc-binary", HUSK, IMAGE, "hk-c1", "sh", "-c", "echo out; cat /proc/cmdline; exit 3")
    assert r.returncode == 3 and r.stdout.startswith(b"out\n") and b"husk.channel=" in r.stdout, (r.stdout, r.stderr)


def test_detached_exec_pause_kill(ctr):
    ctr("run", "-d", "--runc-binary", HUSK, IMAGE, "hk-c2", "sleep", "1000", check=True)
    r = ctr("task", "exec", "--exec-id", "e1", "hk-c2", "sh", "-c", "echo in-exec; exit 4")
    assert r.returncode == 4 and r.stdout == b"in-exec\n"
    rc, out = in_tty(["ctr", "-a", ctr.sock, "-n", NS, "task", "exec", "-t", "--exec-id", "e2", "hk-c2", "tty"])
    assert rc == 0 and b"/dev/pts/" in out, out
    ctr("task", "pause", "hk-c2", check=True)
    assert b"PAUSED" in ctr("task", "ls").stdout
    ctr("task", "resume", "hk-c2", check=True)
    assert b"RUNNING" in ctr("task", "ls").stdout
    ctr("task", "kill", "-s", "SIGKILL", "hk-c2", check=True)
    wait_for(lambda: b"STOPPED" in ctr("task", "ls").stdout, what="task stopped")
    ctr("task", "rm", "hk-c2", check=True)
    ctr("container", "rm", "hk-c2", check=True)


def test_terminal(ctr):
    rc, out = in_tty(["ctr", "-a", ctr.sock, "-n", NS, "run", "--rm", "-t", "--runc-binary", HUSK, IMAGE, "hk-c3", "tty"])
    assert rc == 0 and b"/dev/pts/0" in out, out


def test_a_system_image_boots_its_own_kernel_and_init(ctr, system_tar, tmp_path):
    """ctr run --annotation org.husk.kernel=...: the image's kernel and
    busybox's init, its console as the container's stdio
    (org.husk.stdio=console); ctr task exec beside it; a SIGTERM from
    ctr task kill powers it off and ctr run returns its exit status, 0."""
    from husktest import header_release
    rootfs = tmp_path / "rootfs"
    with tarfile.open(system_tar) as t:
        t.extractall(rootfs)
    release = header_release(os.path.join(os.path.dirname(HUSK), "rootfs-builder", "vmlinuz"))
    out = tmp_path / "out"
    with open(out, "wb") as o:
        p = subprocess.Popen(["ctr", "-a", ctr.sock, "-n", NS, "run", "--rm", "--runc-binary", HUSK,
                              "--annotation", "org.husk.kernel=/boot/vmlinuz", "--annotation", "org.husk.stdio=console",
                              "--rootfs", str(rootfs), "hk-c-system", "/sbin/init"], stdin=subprocess.DEVNULL, stdout=o, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"busybox init: up\r\n" in out.read_bytes() or p.poll() is not None, timeout=240,
                 what="busybox init on its console")
        assert p.poll() is None, out.read_bytes()[-2000:]
        r = ctr("task", "exec", "--exec-id", "e1", "hk-c-system", "uname", "-r")
        assert r.returncode == 0 and r.stdout.decode().strip() == release, (r.stdout, r.stderr)
        ctr("task", "kill", "-s", "SIGTERM", "hk-c-system", check=True)
        assert p.wait(timeout=60) == 0, out.read_bytes()[-2000:]
        assert b"busybox init: shutting down" in out.read_bytes()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
