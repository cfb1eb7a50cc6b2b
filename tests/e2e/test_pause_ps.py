"""pause/resume stop the whole VM; ps lists the container's processes as
its own pid namespace numbers them."""
import json
import os
import time

import pytest

from conftest import DISK_DRIVERS, new_id

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"


def counter(b):
    # /tmp is in the rootfs, which the host shares: read it from here.
    try:
        return int(open(os.path.join(b, "rootfs", "tmp", "n")).read() or 0)
    except (OSError, ValueError):
        return 0


def wait_counter_above(b, n, timeout=60):
    deadline = time.time() + timeout
    while counter(b) <= n:
        assert time.time() < deadline, f"counter stuck at {counter(b)}"
        time.sleep(0.1)
    return counter(b)


@pytest.mark.not_on(DISK_DRIVERS, reason="the counter is read through the host's view of the rootfs, which a disk copy does not give (test_vmm_api checks pause through the API)")
def test_pause_stops_the_clock_and_resume_restarts_it(husk, bundle):
    cid = new_id()
    b = bundle(["sh", "-c", COUNTER])
    husk("run", "-d", "-b", b, cid, check=True)
    wait_counter_above(b, 3)
    husk("pause", cid, check=True)
    assert husk.state(cid)["status"] == "paused"
    frozen = counter(b)
    time.sleep(2)
    assert counter(b) == frozen, "the workload ran while paused"
    # Refused in this state, with clear messages.
    for args, msg in [(["pause", cid], b"container not running: paused"),
                      (["start", cid], b"already running"),
                      (["exec", cid, "true"], b"cannot exec in a paused container")]:
        r = husk(*args)
        assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
    # A signal to a paused container is accepted and waits for resume.
    t0 = time.time()
    husk("kill", cid, "SIGCONT", check=True)
    assert time.time() - t0 < 10
    husk("resume", cid, check=True)
    assert husk.state(cid)["status"] == "running"
    wait_counter_above(b, frozen + 3)
    r = husk("resume", cid)
    assert r.returncode != 0 and b"container not paused: running" in r.stderr

    # A paused container can still be deleted, at once.
    husk("pause", cid, check=True)
    t0 = time.time()
    husk("delete", "--force", cid, check=True)
    assert time.time() - t0 < 15


def test_ps_lists_guest_processes(husk, bundle):
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sh", "-c", "sleep 1000 & sleep 2000; true"]), cid, check=True)
    deadline = time.time() + 60
    while True:
        r = husk("ps", "--format", "json", cid, check=True)
        pids = json.loads(r.stdout)
        if len(pids) >= 3:
            break
        assert time.time() < deadline, pids
        time.sleep(0.2)
    assert pids[0] == 1 and sorted(pids) == pids
    # runc's shape: ps's own columns, -ef unless other ps options follow the id.
    # (A child sh forked for `&` shows sh's command line until it has exec'd
    # sleep: ask again until both sleeps are sleeps.)
    while True:
        table = husk("ps", cid, check=True).stdout.decode().splitlines()
        assert table[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
        rows = {int(l.split()[1]): l.split() for l in table[1:]}
        children = sorted(r[7:] for r in rows.values() if r[2] == "1")  # parent: the init
        if children == [["sleep", "1000"], ["sleep", "2000"]]:
            break
        assert time.time() < deadline, table
        time.sleep(0.2)
    assert rows[1][0] == "root" and rows[1][5] == "?" and rows[1][7:] == ["sh", "-c", "sleep", "1000", "&", "sleep",
                                                                          "2000;", "true"]
    assert husk("ps", cid, "-ef", check=True).stdout.decode().splitlines()[0] == table[0]
    short = husk("ps", cid, "--", "-e", check=True).stdout.decode().splitlines()
    assert short[0].split() == ["PID", "TTY", "TIME", "CMD"] and sorted(l.split()[3] for l in short[1:]) == \
        ["sh", "sleep", "sleep"]
    aux = husk("ps", cid, "aux", check=True).stdout.decode().splitlines()
    assert aux[0].split()[:4] == ["USER", "PID", "%CPU", "%MEM"] and aux[1].split()[7].startswith("S")
    r = husk("ps", cid, "-o", "pid")
    assert r.returncode != 0 and b"ps option \"-o\"" in r.stderr, r.stderr
    husk("delete", "--force", cid, check=True)
    r = husk("ps", cid)
    assert r.returncode != 0 and b"container does not exist" in r.stderr


def test_kill_all_reaches_every_process(husk, bundle):
    # The init (pid 1 of its namespace) ignores SIGTERM it has no handler
    # for; its children do not. Without --all only the init is signalled.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sh", "-c", "sleep 1000 & sleep 2000; true"]), cid, check=True)
    deadline = time.time() + 60
    while len(json.loads(husk("ps", "--format", "json", cid, check=True).stdout)) < 3:
        assert time.time() < deadline
        time.sleep(0.2)
    husk("kill", cid, "TERM", check=True)
    time.sleep(2)
    assert len(json.loads(husk("ps", "--format", "json", cid, check=True).stdout)) == 3
    # With --all the sleeps die, the init's wait returns and it exits.
    husk("kill", "--all", cid, "TERM", check=True)
    deadline = time.time() + 30
    while husk.state(cid)["status"] != "stopped":
        assert time.time() < deadline, husk("ps", cid).stdout
        time.sleep(0.1)
    husk("delete", cid, check=True)
