"""Concurrency: many containers at once; racing commands on one id."""
import concurrent.futures as cf
import os
import subprocess

from conftest import new_id, wait_for


def test_ten_containers_run_concurrently(husk, bundle):
    jobs = []
    for i in range(10):
        b = bundle(["sh", "-c", f"echo container-{i}; exit {i}"])
        jobs.append((i, b, new_id()))
    procs = [(i, subprocess.Popen(husk.cmd("run", "-b", b, cid), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL)) for i, b, cid in jobs]
    for i, p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == i, err
        assert out == f"container-{i}\n".encode()


def test_racing_creates_on_one_id(husk, bundle):
    cid = new_id()
    bundles = [bundle(["sleep", "100"]) for _ in range(4)]
    with cf.ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda b: husk("create", "-b", b, cid, stdin=subprocess.DEVNULL), bundles))
    ok = [r for r in results if r.returncode == 0]
    assert len(ok) == 1, [r.stderr for r in results]
    for r in results:
        if r.returncode != 0:
            assert b"container with id exists" in r.stderr
    assert husk.state(cid)["status"] == "created"
    husk("delete", cid, check=True)


def test_racing_start_and_delete(husk, bundle):
    # Whatever order the lock picks, the outcome is consistent: either the
    # start won and delete refused (or killed a created container), and in
    # the end a forced delete leaves nothing.
    cid = new_id()
    husk("create", "-b", bundle(["sleep", "100"]), cid, stdin=subprocess.DEVNULL, check=True)
    with cf.ThreadPoolExecutor(2) as ex:
        fs = [ex.submit(husk, "start", cid), ex.submit(husk, "delete", cid)]
        start, delete = [f.result() for f in fs]
    if delete.returncode == 0:
        assert start.returncode != 0
        assert husk("state", cid).returncode != 0
    else:
        assert start.returncode == 0 and b"not stopped" in delete.stderr
        husk("delete", "--force", cid, check=True)


def test_caller_killed_during_create_leaves_nothing(husk, bundle, tmp_path):
    # The caller (conmon, containerd's shim) dies while the VM boots: the
    # shim finds nobody to report to, stops the VM and removes the state.
    cid = new_id()
    b = bundle(["sleep", "100"])
    p = subprocess.Popen(husk.cmd("create", "-b", b, cid), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def booting():
        try:
            return husk.state_file(cid).get("vmm_pid", 0) > 0
        except (OSError, ValueError):
            return False
    wait_for(booting, "the VM to be launched", interval=0.05)
    cgroups = husk.state_file(cid)["cgroups"]
    assert cgroups and all(os.path.isdir(d) for d in cgroups)
    p.kill()
    p.wait()
    wait_for(lambda: not os.path.exists(os.path.join(husk.root, cid)), "the shim to remove an orphaned create", 180)
    # Its host cgroups too: the caller that made them is gone (bench/chaos
    # found them left).
    wait_for(lambda: not any(os.path.isdir(d) for d in cgroups), "the shim to remove the host cgroups", 30)
    # Tearing down the state never reaches through the shim's bind mounts
    # into the bundle (it once did).
    assert os.path.exists(os.path.join(b, "rootfs", "bin", "busybox"))

    # Same while the create hooks run (the shim waits for them, no VM yet).
    cid = new_id()
    started = tmp_path / "hook-started"

    def hook(c):
        c["hooks"] = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", f"touch {started}; exec sleep 30"]}]}
    p = subprocess.Popen(husk.cmd("create", "-b", bundle(["sleep", "100"], edit=hook), cid),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(started.exists, "the create hook to start", interval=0.05)
    p.kill()
    p.wait()
    wait_for(lambda: not os.path.exists(os.path.join(husk.root, cid)), "the shim to remove an orphaned create", 180)
