"""Rootless podman with husk: an unprivileged user made by the test runs
`podman --runtime husk`. podman runs husk as root of its user namespace;
husk keeps its state under $XDG_RUNTIME_DIR/husk (runc's rule), runs
without host cgroups, and QEMU runs under TCG unprivileged. slirp4netns
puts a tap in the container's netns, and husk carries it into the VM like
any veth."""
import os
import shutil
import stat
import subprocess

import pytest

from conftest import HUSK, WEB, have, http_get, run, wait_for
from husktest import make_user, remove_user

USER = "husk-rootless"
IMAGE = "localhost/husk-rootless-busybox:latest"

pytestmark = pytest.mark.skipif(not have("podman") or not have("slirp4netns"),
                                reason="podman and slirp4netns are not installed (scripts/deps installs them)")


@pytest.fixture(scope="module")
def rootless(rootfs_tar):
    pw, xdg, made = make_user(USER)
    # Debian makes /dev/net/tun 0666 (the kernel checks CAP_NET_ADMIN in
    # the netns's owner); some sandboxes make it 0600, which stops
    # slirp4netns for any runtime. Put Debian's mode back for the test.
    tun_mode = stat.S_IMODE(os.stat("/dev/net/tun").st_mode)
    os.chmod("/dev/net/tun", 0o666)
    env = {"HOME": pw.pw_dir, "USER": USER, "XDG_RUNTIME_DIR": xdg, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def as_user(*args, check=False, timeout=300):
        return run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--reset-env",
                    "env", *[f"{k}={v}" for k, v in env.items()], *args], check=check, timeout=timeout)
    as_user.state = os.path.join(xdg, "husk")
    # Whatever fails from here on, the host gets its tun mode back and
    # loses the user the test made.
    try:
        tar = os.path.join(pw.pw_dir, "busybox.tar")
        shutil.copy(rootfs_tar, tar)
        os.chown(tar, pw.pw_uid, pw.pw_gid)
        as_user("podman", "import", tar, IMAGE, check=True)
        yield as_user
        as_user("podman", "rm", "-a", "-f", "-t", "0")
        as_user("podman", "rmi", "-f", IMAGE)
    finally:
        os.chmod("/dev/net/tun", tun_mode)
        remove_user(USER, xdg, made)

def assert_no_user_state(rootless):
    wait_for(lambda: not os.path.isdir(rootless.state) or not os.listdir(rootless.state), timeout=15,
             what="husk state under $XDG_RUNTIME_DIR to go")
    out = subprocess.run(["pgrep", "-u", USER, "-f", "husk-shim|qemu-system"], capture_output=True, text=True).stdout
    assert out.strip() == "", out


def test_rootless_run_and_network(rootless, tmp_path):
    r = rootless("podman", "--runtime", HUSK, "run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                 "id -u; cat /proc/cmdline; ip -o link | cut -d: -f2")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().split("\n")
    assert out[0] == "0" and "husk.channel=" in out[1] and out[2:4] == [" lo", ""], r.stdout
    assert os.path.isdir(rootless.state)  # husk kept its state where runc would
    # slirp4netns's tap, carried into the VM: the guest reaches a server
    # on the host's address (10.0.2.2, the host's loopback, is off in
    # podman's slirp4netns).
    host_ip = subprocess.run(["ip", "-4", "-o", "route", "get", "192.0.2.1"], capture_output=True,
                             text=True).stdout.split(" src ")[1].split()[0]
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("host-page\n")
    with subprocess.Popen(["busybox", "httpd", "-f", "-p", "18093", "-h", str(www)]) as srv:
        try:
            r = rootless("podman", "--runtime", HUSK, "run", "--rm", IMAGE, "sh", "-c",
                         f"ip -o -4 addr show tap0; wget -q -O - http://{host_ip}:18093/")
        finally:
            srv.kill()
    assert r.returncode == 0 and b"inet 10.0.2.100/24" in r.stdout and r.stdout.endswith(b"host-page\n"), (r.stdout, r.stderr)
    assert_no_user_state(rootless)


def test_rootless_published_port(rootless):
    # rootlessport (podman's default port handler) connects from inside
    # the netns, where nothing listens: the workload is in the VM. The
    # slirp4netns port handler forwards into the netns's tap, which
    # reaches the VM (README: rootless).
    r = rootless("podman", "--runtime", HUSK, "run", "-d", "--name", "hk-rl-web", "-p", "18094:80",
                 "--network", "slirp4netns:port_handler=slirp4netns", IMAGE, "sh", "-c", WEB)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: http_get("http://127.0.0.1:18094/") == b"hello-from-husk\n", timeout=90, what="the published port")
    rootless("podman", "rm", "-f", "-t", "0", "hk-rl-web", check=True)
    assert_no_user_state(rootless)
