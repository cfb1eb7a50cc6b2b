"""husk as a plain unprivileged user (a user the test makes), on QEMU TCG and
on UML: state under $XDG_RUNTIME_DIR/husk, no host cgroups, the shim root
of a user namespace of its own (the caller's ids mapped to 0), no tap
(the container gets a network namespace of its own with no links)."""
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import BUSYBOX, DRIVER, HUSK, base_config, new_id, reap, wait_for
from husktest import make_user, remove_user

# It runs QEMU and UML itself: once, in the default pass.
pytestmark = pytest.mark.skipif(DRIVER != "qemu", reason="picks its drivers itself; runs in the default pass")

# One user per pytest-xdist worker: a module fixture runs once in each
# worker that gets a test of this module, and one worker's teardown
# (pkill -u, userdel) must not take the other's user from under it.
USER = "husk-plain-" + os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="module")
def plain_user():
    pw, xdg, made = make_user(USER)
    env = {"HOME": pw.pw_dir, "USER": USER, "XDG_RUNTIME_DIR": xdg, "PATH": "/usr/bin:/bin"}
    for k in ("HUSK_BUILD", "HUSK_KERNEL", "HUSK_INITRD", "HUSK_UML"):
        if k in os.environ:
            env[k] = os.environ[k]

    def as_user(*args, timeout=240, extra_env=None):
        # Files, not pipes: after create the shim keeps stdout/stderr open.
        e = dict(env, **(extra_env or {}))
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                                "--reset-env", "env", *[f"{k}={v}" for k, v in e.items()], HUSK, *args],
                               stdout=out, stderr=err, timeout=timeout, stdin=subprocess.DEVNULL)
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read())
    as_user.pw = pw
    as_user.state = os.path.join(xdg, "husk")
    try:
        yield as_user
    finally:
        remove_user(USER, xdg, made)


def user_bundle(user, args):
    """A bundle the user owns, in their home."""
    b = os.path.join(user.pw.pw_dir, f"bundle-{new_id()}")
    for d in ("bin", "proc", "dev", "sys", "tmp", "etc"):
        os.makedirs(os.path.join(b, "rootfs", d))
    shutil.copy(BUSYBOX, os.path.join(b, "rootfs", "bin", "busybox"))
    for a in ("sh", "cat", "id", "echo", "sleep", "ls"):
        os.symlink("busybox", os.path.join(b, "rootfs", "bin", a))
    c = base_config(args)
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(c, f)
    subprocess.run(["chown", "-R", f"{user.pw.pw_uid}:{user.pw.pw_gid}", b], check=True)
    return b


def no_processes_of(user):
    reap()  # exited detached shims are our children (we are a subreaper)
    r = subprocess.run(["pgrep", "-u", USER, "-a"], capture_output=True, text=True)
    return r.stdout.strip() == ""


@pytest.mark.parametrize("driver", ["qemu", "uml"])
def test_a_plain_user_runs_a_container(plain_user, driver):
    b = user_bundle(plain_user, ["sh", "-c", "echo hello from $(id -u); exit 3"])
    r = plain_user("--debug", "--hypervisor", driver, "run", "-b", b, new_id())
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"hello from 0\n"
    # virtiofsd must be root to act as the guest's users: rootless, the
    # share is 9p (QEMU) or hostfs (UML), and --debug says why.
    assert ("share: 9p (9p: rootless" if driver == "qemu" else "share: hostfs") in r.stderr.decode()
    wait_for(lambda: no_processes_of(plain_user), "the user's husk processes to go", timeout=20)
    assert not os.listdir(plain_user.state)
    shutil.rmtree(b)


def test_a_plain_user_boots_a_vm_whose_channel_is_husk_vsock(plain_user):
    # husk-vsock runs in a jail of the user's own user namespace, as the VMM does.
    if os.path.exists("/dev/vhost-vsock"):
        pytest.skip("this host has /dev/vhost-vsock: the kernel serves the channel")
    b = user_bundle(plain_user, ["sh", "-c", "echo over vsock; exit 3"])
    r = plain_user("--debug", "--hypervisor", "qemu", "run", "-b", b, new_id(), extra_env={"HUSK_TEMPLATES": "0"})
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"over vsock\n"
    assert "channel vsock (husk-vsock)" in r.stderr.decode(), r.stderr
    wait_for(lambda: no_processes_of(plain_user), "the user's husk processes to go", timeout=20)
    assert not os.listdir(plain_user.state)
    shutil.rmtree(b)


@pytest.mark.parametrize("driver", ["qemu", "uml"])
def test_a_plain_user_creates_starts_kills_and_deletes(plain_user, driver):
    cid = new_id()
    b = user_bundle(plain_user, ["sleep", "300"])
    r = plain_user("--hypervisor", driver, "create", "-b", b, cid)
    assert r.returncode == 0, r.stderr
    st = os.stat(os.path.join(plain_user.state, cid))
    assert st.st_uid == plain_user.pw.pw_uid  # the user's own state, under XDG_RUNTIME_DIR
    assert plain_user("start", cid).returncode == 0
    state = json.loads(plain_user("state", cid).stdout)
    assert state["status"] == "running"
    assert plain_user("kill", cid, "KILL").returncode == 0
    wait_for(lambda: json.loads(plain_user("state", cid).stdout)["status"] == "stopped", "the container to stop")
    r = plain_user("delete", cid)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(os.path.join(plain_user.state, cid))
    wait_for(lambda: no_processes_of(plain_user), "the user's husk processes to go", timeout=20)
    shutil.rmtree(b)


def test_a_plain_user_boots_a_system_image(plain_user):
    """org.husk.kernel as a plain user (QEMU TCG): the image's kernel (here
    husk's vmlinuz, put in the image), busybox's init as PID 1, which
    powers off from its sysinit line: exit status 0."""
    b = user_bundle(plain_user, ["/sbin/init"])
    root = os.path.join(b, "rootfs")
    os.makedirs(os.path.join(root, "sbin"))
    os.symlink("../bin/busybox", os.path.join(root, "sbin", "init"))
    os.makedirs(os.path.join(root, "boot"))
    shutil.copy(os.path.join(os.path.dirname(HUSK), "rootfs-builder", "vmlinuz"), os.path.join(root, "boot", "vmlinuz"))
    with open(os.path.join(root, "etc", "inittab"), "w") as f:
        f.write("::sysinit:/bin/sh -c 'echo up as $$; kill -USR2 1'\n::shutdown:/bin/echo powering off\n")
    with open(os.path.join(b, "config.json")) as f:
        c = json.load(f)
    c["annotations"] = {"org.husk.kernel": "/boot/vmlinuz"}
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(c, f)
    subprocess.run(["chown", "-R", f"{plain_user.pw.pw_uid}:{plain_user.pw.pw_gid}", b], check=True)
    r = plain_user("--debug", "run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    assert b"up as" in r.stdout and b"powering off" in r.stdout, r.stdout
    assert "template: none (the image boots its own kernel (org.husk.kernel))" in r.stderr.decode()
    wait_for(lambda: no_processes_of(plain_user), "the user's husk processes to go", timeout=20)
    assert not os.listdir(plain_user.state)
    shutil.rmtree(b)
