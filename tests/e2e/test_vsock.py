"""The agent's channel over vsock on a host without /dev/vhost-vsock:
husk-vsock (hypervisors/husk-vsock/) serves QEMU's vhost-user-vsock device,
and the shim reaches the agent through its hybrid socket. A VM booted on
its own gets it; so does a template's clone, once restored (QEMU 7.2
cannot save the device, so the VM that makes the template keeps
virtio-serial, and says why)."""
import hashlib
import os
import re
import signal
import subprocess
import time

import pytest

from conftest import DRIVER, KVM_SHAPE, new_id, wait_for
from husktest import processes_mentioning

pytestmark = pytest.mark.skipif(DRIVER != "qemu", reason="husk-vsock is QEMU's vsock device (UML keeps its console line; "
                                "Firecracker and Cloud Hypervisor have their own hybrid vsock)")

BOOTED = dict(os.environ, HUSK_TEMPLATES="0")


def no_kernel_vsock():
    if os.path.exists("/dev/vhost-vsock"):
        pytest.skip("this host has /dev/vhost-vsock: QEMU's vhost-vsock device is the channel, not husk-vsock")


def backend_pids(husk):
    return [p for p, cmd in processes_mentioning(husk.root) if "husk-vsock" in cmd]


def test_a_booted_vm_talks_to_its_agent_over_vsock(husk, bundle):
    no_kernel_vsock()
    b = bundle(["sh", "-c", "cat /proc/cmdline; ls /sys/bus/virtio/drivers/; exit 5"])
    r = husk("--debug", "run", "-b", b, new_id(), env=BOOTED)
    err = r.stderr.decode()
    assert r.returncode == 5, err
    assert "channel vsock (husk-vsock)" in err, err
    assert "channel open (vsock)" in err, err
    out = r.stdout.decode()
    assert "husk.channel=vsock" in out
    assert "vmw_vsock_virtio_transport" in out, out


def test_stdio_and_exec_over_vsock_arrive_intact(husk, bundle):
    no_kernel_vsock()
    data = os.urandom(3 * 1024 * 1024 + 17)
    b = bundle(["sh", "-c", "md5sum | cut -d' ' -f1 >&2; head -c 5242880 /dev/urandom | tee /tmp/x | md5sum >&2; cat /tmp/x"])
    r = husk("run", "-b", b, new_id(), input=data, env=BOOTED)
    assert r.returncode == 0, r.stderr
    sums = r.stderr.decode().split()
    assert sums[0] == hashlib.md5(data).hexdigest()
    assert len(r.stdout) == 5242880 and hashlib.md5(r.stdout).hexdigest() == sums[1]
    # Many execs, each its own session on the one stream.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "600"]), cid, env=BOOTED, check=True)
    assert backend_pids(husk), "no husk-vsock for a booted VM"
    for i in range(5):
        e = husk("exec", cid, "sh", "-c", f"echo exec {i}; exit {i}")
        assert e.returncode == i and e.stdout == f"exec {i}\n".encode(), e.stderr
    husk("kill", cid, "KILL", check=True)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "stopped")
    husk("delete", cid, check=True)
    assert not backend_pids(husk), "husk-vsock outlived its VM"


def test_a_template_is_saved_on_virtio_serial_and_its_clones_talk_over_vsock(husk, bundle, tmp_path):
    # QEMU 7.2 cannot save husk-vsock's device: the VM that boots to make
    # the template keeps virtio-serial, and says why. Each clone is given
    # the device once restored (with its virtio-fs share), and its agent,
    # which listened on vsock as a template, takes the dial as its channel.
    no_kernel_vsock()
    if KVM_SHAPE:
        pytest.skip("the KVM configuration makes no templates")
    env = dict(os.environ, HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(tmp_path / "templates"))
    r = husk("--debug", "run", "-b", bundle(["true"]), new_id(), env=env)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "template: none of this shape yet" in err, err
    assert "channel virtio-serial (this VM boots to be saved as a template, and QEMU cannot save husk-vsock's device" \
        in err, err
    data = os.urandom(1024 * 1024 + 5)
    b = bundle(["sh", "-c", "md5sum | cut -d' ' -f1 >&2; head -c 3145728 /dev/urandom | tee /tmp/x | md5sum >&2; cat /tmp/x"])
    r = husk("--debug", "run", "-b", b, new_id(), input=data, env=env)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert "template: restoring " in err and "Linux version" not in err, err[-3000:]
    assert "channel vsock (husk-vsock, plugged in once restored" in err, err[-3000:]
    assert "template: the agent answered on vsock" in err, err[-3000:]
    sums = [line[:32] for line in err.splitlines() if re.match(r"[0-9a-f]{32}( |$)", line)]
    assert sums[0] == hashlib.md5(data).hexdigest(), err[-2000:]
    assert len(r.stdout) == 3145728 and hashlib.md5(r.stdout).hexdigest() == sums[1]
    # A clone lives on it: execs, and husk-vsock goes with the VM; killed,
    # it takes the container with it, as a booted VM's does.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "600"]), cid, env=env, check=True)
    pids = backend_pids(husk)
    assert pids, "no husk-vsock for a template's clone"
    for i in range(3):
        e = husk("exec", cid, "sh", "-c", f"echo exec {i}; exit {i}")
        assert e.returncode == i and e.stdout == f"exec {i}\n".encode(), e.stderr
    assert husk("exec", cid, "ls", "/sys/bus/virtio/drivers/vmw_vsock_virtio_transport").returncode == 0
    for p in pids:
        os.kill(p, signal.SIGKILL)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "stopped after husk-vsock died", timeout=60)
    husk("delete", cid, check=True)
    assert not backend_pids(husk)


def test_a_clone_whose_vsock_device_cannot_be_plugged_in_goes_on_over_virtio_serial(husk, bundle, tmp_path):
    # husk-vsock fails (here: a binary that exits at once, so QEMU's
    # chardev-add finds no backend): the restored guest is fine and its
    # agent still reads the template's port, so the container goes on with
    # virtio-serial, and the template is kept.
    no_kernel_vsock()
    if KVM_SHAPE:
        pytest.skip("the KVM configuration makes no templates")
    templates = tmp_path / "templates"
    env = dict(os.environ, HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(templates))
    b = bundle(["sh", "-c", "echo from the clone; exit 3"])
    husk("run", "-b", bundle(["true"]), new_id(), env=env, check=True)  # makes the template
    kept = sorted(os.listdir(templates))
    broken = tmp_path / "husk-vsock"
    broken.write_text("#!/bin/sh\necho 'husk-vsock: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    r = husk("--debug", "run", "-b", b, new_id(), env=dict(env, HUSK_VSOCK=str(broken)))
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 3 and r.stdout == b"from the clone\n", err[-3000:]
    assert "template: restoring " in err and "Linux version" not in err, err[-3000:]
    assert "husk-vsock's device could not be plugged in (" in err and "the channel stays virtio-serial" in err, \
        err[-3000:]
    assert sorted(os.listdir(templates)) == kept


def test_a_template_clone_without_virtio_fs_keeps_virtio_serial_and_says_why(husk, bundle, tmp_path):
    # A 9p template's memory is not a shared memfd, which husk-vsock's
    # device needs: its clones stay on virtio-serial.
    no_kernel_vsock()
    if KVM_SHAPE:
        pytest.skip("the KVM configuration makes no templates")
    env = dict(os.environ, HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(tmp_path / "templates"))
    b = bundle(["echo", "on 9p"], edit=lambda c: c.setdefault("annotations", {}).update({"org.husk.share": "9p"}))
    husk("run", "-b", b, new_id(), env=env, check=True)
    r = husk("--debug", "run", "-b", b, new_id(), env=env)
    err = r.stderr.decode()
    assert r.returncode == 0 and r.stdout == b"on 9p\n", err
    assert "template: restoring " in err, err
    assert "channel virtio-serial (a template cannot hold husk-vsock's device (QEMU cannot save it), and without a " \
        "virtio-fs share" in err, err


def test_a_backend_that_dies_stops_the_container_and_leaves_nothing(husk, bundle):
    no_kernel_vsock()
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "600"]), cid, env=BOOTED, check=True)
    pids = backend_pids(husk)
    assert pids
    for p in pids:
        os.kill(p, signal.SIGKILL)
    # The shim loses its agent: the container is over, as when its VM dies.
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "stopped after husk-vsock died", timeout=60)
    husk("delete", cid, check=True)


def test_a_backend_that_fails_to_start_fails_the_create(husk, bundle, tmp_path):
    no_kernel_vsock()
    broken = tmp_path / "husk-vsock"
    broken.write_text("#!/bin/sh\necho 'husk-vsock: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    r = husk("run", "-b", bundle(["true"]), new_id(), env=dict(BOOTED, HUSK_VSOCK=str(broken)))
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "vhost" in err or "husk-vsock" in err or "vsock" in err, err


def test_the_channel_lives_through_a_pause_and_memory_plugged_in(husk, bundle):
    no_kernel_vsock()
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "600"]), cid, env=BOOTED, check=True)
    # A pause stops QEMU's vhost-user rings (GET_VRING_BASE); the resume
    # starts them again: the agent's stream must outlive it.
    husk("pause", cid, check=True)
    assert husk.state(cid)["status"] == "paused"
    husk("resume", cid, check=True)
    r = husk("exec", cid, "echo", "after the pause")
    assert r.returncode == 0 and r.stdout == b"after the pause\n", r.stderr
    # Memory plugged in (virtio-mem): the guest's buffers may now lie in
    # the plugged part. (QEMU 7.2 sends no new memory table for it: the
    # device's whole region is in the table from the boot. A new table
    # while the rings run is unit-tested: test_vsock_backend.cpp.)
    if not KVM_SHAPE:  # microvm has no virtio-mem
        before = int(husk("exec", cid, "grep", "MemTotal", "/proc/meminfo", check=True).stdout.split()[1])
        husk("update", "--memory", "700M", cid, check=True)
        wait_for(lambda: int(husk("exec", cid, "grep", "MemTotal", "/proc/meminfo", check=True).stdout.split()[1])
                 >= max(before, 690 * 1024), "the VM to grow for the update")
        r = husk("exec", cid, "sh", "-c", "head -c 1048576 /dev/zero | wc -c")
        assert r.returncode == 0 and r.stdout.strip() == b"1048576", r.stderr
    husk("delete", "--force", cid, check=True)
