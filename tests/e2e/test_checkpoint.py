"""husk checkpoint / husk restore (runc's CLI shape): a running container's
whole VM saved into an image directory with its rootfs disk, and loaded
into a new VM that goes on where it was (docs/design.md, "Checkpoint and
restore"). QEMU only, with the rootfs on a disk (org.husk.rootfs=disk):
QEMU 7.2 cannot migrate a mounted 9p share or a virtio-fs device."""
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import DRIVER, new_id, wait_for

pytestmark = pytest.mark.skipif(DRIVER != "qemu", reason="checkpoints are the qemu driver's (UML has no save/load)")

# A process whose state is in its memory: a shell counting on stdout.
COUNTER = ["sh", "-c", "echo on-disk > /kept; i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"]


def with_disk(c):
    c.setdefault("annotations", {})["org.husk.rootfs"] = "disk"


def numbers(path):
    return [int(l) for l in open(path).read().split()]


def run_counter(husk, bundle, tmp_path, cid, name="out1"):
    b = bundle(COUNTER, edit=with_disk)
    out = tmp_path / name
    with open(out, "wb") as f:
        husk("run", "-d", "-b", b, cid, stdout=f, check=True)
    wait_for(lambda: len(numbers(out)) >= 5, "the counter's output")
    return b, out


def test_a_checkpointed_container_is_restored_where_it_was(husk, bundle, tmp_path):
    cid = new_id()
    b, out1 = run_counter(husk, bundle, tmp_path, cid)
    image = tmp_path / "image"
    r = husk("checkpoint", "--image-path", str(image), cid, glob=("--debug",))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    # The container is gone, as runc's is after a checkpoint.
    assert not os.path.exists(os.path.join(husk.root, cid))
    assert sorted(os.listdir(image)) == ["descriptors.json", "husk-checkpoint.json", "inventory.img", "rootfs.img", "stats-dump",
                                         "vm.state"]
    # What runc's callers look for: CRIU's inventory (its magic, version 2), runc's descriptors.
    assert (image / "inventory.img").read_bytes() == b"\x16\x31\x31\x58\x02\x00\x00\x00\x08\x02"
    assert len(json.loads((image / "descriptors.json").read_text())) == 3
    # The save's figures in CRIU's stats-dump (podman --print-stats reads them).
    assert (image / "stats-dump").read_bytes()[:8] == b"\x40\x59\x10\x55\x06\x33\x09\x57"
    if shutil.which("crit"):
        dump = json.loads(subprocess.run(["crit", "decode", "-i", str(image / "stats-dump")], capture_output=True,
                                         check=True).stdout)["entries"][0]["dump"]
        assert dump["pages_written"] * 4096 <= os.path.getsize(image / "vm.state") < (dump["pages_written"] + 1) * 4096
        assert 0 < dump["memdump_time"] <= dump["frozen_time"]
    info = json.loads((image / "husk-checkpoint.json").read_text())
    assert info["hypervisor"] == "qemu" and info["id"] == cid and info["terminal"] is False
    before = numbers(out1)
    assert before == list(range(1, len(before) + 1)), before
    time.sleep(1)
    assert numbers(out1) == before  # nothing runs any more

    # Restored: the same shell goes on counting from where it was, into the
    # new caller's stdout; not one line lost or repeated (the agent held
    # what the process wrote between the quiesce and the save).
    out2 = tmp_path / "out2"
    with open(out2, "wb") as f:
        r = husk("restore", "-d", "--image-path", str(image), "-b", b, cid, stdout=f, glob=("--debug",))
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert "checkpoint: loading " in err and "Linux version" not in err, err[-3000:]
    assert (image / "stats-restore").exists()
    assert husk.state(cid)["status"] == "running"
    wait_for(lambda: len(numbers(out2)) >= 5, "the restored counter's output")
    after = numbers(out2)
    assert after[0] == before[-1] + 1, (before[-5:], after[:5])
    assert after == list(range(after[0], after[0] + len(after)))
    # Its rootfs disk is the one it left.
    assert husk("exec", cid, "cat", "/kept", check=True).stdout == b"on-disk\n"
    husk("kill", cid, "KILL", check=True)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the restored container to stop")
    husk("delete", cid, check=True)


def test_leave_running_keeps_the_container_and_its_checkpoint_restores_as_another(husk, bundle, tmp_path):
    cid, clone = new_id(), new_id()
    b, out1 = run_counter(husk, bundle, tmp_path, cid)
    image = tmp_path / "image"
    husk("checkpoint", "--leave-running", "--tcp-established", "--image-path", str(image), cid, check=True)
    at = len(numbers(out1))
    # It runs on, relaying as before.
    assert husk.state(cid)["status"] == "running"
    wait_for(lambda: len(numbers(out1)) >= at + 5, "the counter to go on after the checkpoint")
    got = numbers(out1)
    assert got == list(range(1, len(got) + 1))
    # The checkpoint starts a second container from the moment it was taken.
    out2 = tmp_path / "out2"
    with open(out2, "wb") as f:
        husk("restore", "-d", "--image-path", str(image), "-b", b, clone, stdout=f, check=True)
    wait_for(lambda: len(numbers(out2)) >= 3, "the clone's output")
    first = numbers(out2)[0]
    assert 1 < first <= at + 1, (at, numbers(out2)[:3])
    for c in (cid, clone):
        husk("delete", "--force", c, check=True)


def test_a_restored_container_keeps_its_network(husk, bundle, tmp_path, netpair):
    from conftest import in_netns, sh
    cid = new_id()
    b = bundle(["sleep", "1000"], edit=lambda c: (with_disk(c), in_netns(netpair["path"])(c)))
    husk("run", "-d", "-b", b, cid, check=True)
    # The guest's own network stack reaches the peer (its NIC, address and
    # routes as it left them).
    ping = lambda: husk("exec", cid, "ping", "-c", "2", "-W", "5", netpair["gw"])  # noqa: E731
    assert ping().returncode == 0
    image = tmp_path / "image"
    husk("checkpoint", "--image-path", str(image), cid, check=True)
    husk("restore", "-d", "--image-path", str(image), "-b", b, cid, check=True)
    r = ping()
    assert r.returncode == 0, r.stdout + r.stderr
    r = sh("ip", "netns", "exec", netpair["peer"], "busybox", "ping", "-c", "2", "-W", "5", netpair["addr"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    husk("delete", "--force", cid, check=True)


def test_what_cannot_be_checkpointed_is_refused_saying_why_and_runs_on(husk, bundle, tmp_path):
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)  # its rootfs shared (9p or virtio-fs)
    image = tmp_path / "image"
    r = husk("checkpoint", "--image-path", str(image), cid)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "cannot migrate a VM with a mounted 9p share or a virtio-fs device" in err and "org.husk.rootfs=disk" in err, err
    assert husk.state(cid)["status"] == "running"
    assert husk("exec", cid, "true").returncode == 0
    assert not (image / "vm.state").exists()
    r = husk("checkpoint", "--pre-dump", "--image-path", str(image), cid)
    assert r.returncode != 0 and b"husk saves the whole VM at once" in r.stderr
    husk("kill", cid, "KILL", check=True)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the container to stop")
    r = husk("checkpoint", "--image-path", str(image), cid)
    assert r.returncode != 0 and b"container is not running: stopped" in r.stderr
    husk("delete", cid, check=True)


def test_a_restore_that_cannot_load_fails_clearly_and_leaves_nothing(husk, bundle, tmp_path):
    cid = new_id()
    b, _ = run_counter(husk, bundle, tmp_path, cid)
    image = tmp_path / "image"
    husk("checkpoint", "--image-path", str(image), cid, check=True)
    # Not an image.
    r = husk("restore", "-d", "--image-path", str(tmp_path / "nowhere"), "-b", b, cid)
    assert r.returncode != 0 and b"does not exist" in r.stderr, r.stderr
    # Another VM: the bundle now asks for more memory.
    bigger = bundle(COUNTER, edit=lambda c: (with_disk(c), c["linux"].setdefault("resources", {}).update(
        {"memory": {"limit": 512 << 20}})))
    r = husk("restore", "-d", "--image-path", str(image), "-b", bigger, cid)
    err = r.stderr.decode()
    assert r.returncode != 0 and "its VM differs from this container's: it was saved with" in err, err
    assert not os.path.exists(os.path.join(husk.root, cid))
    # A state file that is not the VM's: the load fails, and says so.
    (image / "vm.state").write_bytes(b"\0" * 4096)
    r = husk("restore", "-d", "--image-path", str(image), "-b", b, cid)
    assert r.returncode != 0 and b"did not load: the VMM exited" in r.stderr and b"Not a migration stream" in r.stderr, r.stderr
    # (the husk fixture asserts no state dir, VMM, QEMU or mount is left)


def test_a_terminal_container_is_restored_onto_a_new_console(husk, bundle, tmp_path):
    from test_terminal import ConsoleSocket
    cid = new_id()

    def edit(c):
        with_disk(c)
        c["process"]["terminal"] = True
    b = bundle(["sh"], edit=edit)
    cs = ConsoleSocket(tmp_path / "c1.sock")
    husk("run", "-d", "--console-socket", cs.path, "-b", b, cid, check=True)
    t = cs.receive()
    t.send(b"x=kept-in-memory; echo ready-$x\r")
    t.expect(b"ready-kept-in-memory")
    image = tmp_path / "image"
    husk("checkpoint", "--image-path", str(image), cid, check=True)
    assert json.loads((image / "husk-checkpoint.json").read_text())["terminal"] is True
    os.close(t.fd)
    # A new console: the same shell, its variable still set.
    cs2 = ConsoleSocket(tmp_path / "c2.sock")
    husk("restore", "-d", "--console-socket", cs2.path, "--image-path", str(image), "-b", b, cid, check=True)
    t2 = cs2.receive()
    t2.send(b"echo again-$x\r")
    t2.expect(b"again-kept-in-memory")
    t2.send(b"exit 3\r")
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the restored shell to exit")
    assert husk.state_file(cid).get("exit_code") == 3
    husk("delete", cid, check=True)
    os.close(t2.fd)
    # A restore without a terminal of a checkpoint that had one: refused.
    r = husk("restore", "-d", "--image-path", str(image), "-b", bundle(["sh"], edit=with_disk), cid)
    assert r.returncode != 0 and b"its process had a terminal" in r.stderr, r.stderr


def test_husk_check_says_what_checkpoints_need(husk):
    out = husk("check", check=True).stdout.decode()
    line = next(l for l in out.splitlines() if l.startswith("checkpoint "))
    assert " ok " in line and "org.husk.rootfs=disk" in line, out
    assert ("criu is installed" in line) == bool(shutil.which("criu")), line
    assert any(l.startswith("memory merging (KSM)") for l in out.splitlines()), out


def test_a_save_that_fails_leaves_the_container_running_with_nothing_lost(husk, bundle, tmp_path):
    cid = new_id()
    b, out1 = run_counter(husk, bundle, tmp_path, cid)
    image = tmp_path / "image"
    (image / "rootfs.img").mkdir(parents=True)  # the disk's copy cannot be written: after the VM was saved
    r = husk("checkpoint", "--image-path", str(image), cid)
    assert r.returncode != 0 and b"the rootfs disk" in r.stderr, r.stderr
    assert husk.state(cid)["status"] == "running"
    assert not (image / "husk-checkpoint.json").exists()  # not an image to restore
    at = len(numbers(out1))
    wait_for(lambda: len(numbers(out1)) >= at + 5, "the counter to go on")
    got = numbers(out1)
    assert got == list(range(1, len(got) + 1))  # the agent relays again, nothing lost
    assert husk("exec", cid, "true").returncode == 0
    husk("delete", "--force", cid, check=True)
