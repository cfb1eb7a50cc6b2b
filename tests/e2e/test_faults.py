"""Faults: the VMM, the shim or the guest kernel dies under a running
container; the state root is wiped or full. Each ends with the container
reported stopped (or a clear error) and nothing left behind: the fixture
checks for processes, mounts and state after every test.

A VM that dies takes the workload with it without an exit status: husk
reports 255 for it (the runtime's "unknown", as conmon and containerd's
shim use 255 for a container whose status was lost), never a status the
workload could have chosen itself."""
import json
import os
import signal
import subprocess

from conftest import new_id, wait_for


def pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] == "Z"


def run_detached_with_exec(husk, bundle):
    """A running container, its shim (as `run -d` leaves it, our child by
    reparenting) and a foreground exec in it."""
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    ex = subprocess.Popen(husk.cmd("exec", cid, "sleep", "1000"), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: "sleep" in husk("ps", cid).stdout.decode().split("\n", 1)[-1].replace("sleep 1000", "", 1),
             "the exec to run")
    return cid, ex


def assert_stopped_255(husk, cid, ex):
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the container to be reported stopped")
    assert ex.wait(timeout=60) != 0  # the exec relay ends too, with a failure
    st = husk.state_file(cid)
    assert st.get("exit_code") == 255, st
    husk("delete", cid, check=True)


def test_vmm_killed(husk, bundle):
    cid, ex = run_detached_with_exec(husk, bundle)
    st = husk.state_file(cid)
    os.kill(st["vmm_pid"], signal.SIGKILL)
    assert_stopped_255(husk, cid, ex)
    assert pid_gone(st["pid"])


def test_shim_killed(husk, bundle):
    # The VMM dies with its shim (PR_SET_PDEATHSIG): no orphaned VM.
    cid, ex = run_detached_with_exec(husk, bundle)
    st = husk.state_file(cid)
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: pid_gone(st["vmm_pid"]), "the VMM to die with its shim")
    assert husk.state(cid)["status"] == "stopped"
    assert ex.wait(timeout=60) != 0
    husk("delete", cid, check=True)


def jail_processes(init):
    """Every process in a VMM's jail but its reaper (UML is several)."""
    kids = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(d))
        except (OSError, ValueError):
            pass
    out, todo = [], list(kids.get(init, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def test_a_hung_guest_still_dies_of_sigkill(husk, bundle):
    # The VM stops answering (its VMM frozen): SIGKILL must still kill the
    # container, as it does under runc. The shim gives the guest 10 s to
    # act on it, then stops the VM; the container died of SIGKILL.
    cid, ex = run_detached_with_exec(husk, bundle)
    st = husk.state_file(cid)
    frozen = jail_processes(st["vmm_pid"])
    assert frozen
    for p in frozen:
        os.kill(p, signal.SIGSTOP)
    r = husk("kill", cid, "KILL")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the container to be reported stopped")
    assert husk.state_file(cid).get("exit_signal") == 9
    assert ex.wait(timeout=60) != 0
    wait_for(lambda: pid_gone(st["vmm_pid"]) and pid_gone(st["pid"]), "the VMM and the shim to go")
    husk("delete", cid, check=True)


def test_guest_kernel_panic(husk, bundle):
    # The workload crashes the guest kernel (sysrq "c"): QEMU exits
    # (-no-reboot), the shim reports the container stopped.
    def edit(c):
        c["linux"]["readonlyPaths"] = [p for p in c["linux"].get("readonlyPaths", []) if "sysrq" not in p]
        c["linux"]["maskedPaths"] = [p for p in c["linux"].get("maskedPaths", []) if "sysrq" not in p]
    cid = new_id()
    b = bundle(["sh", "-c", "sleep 2; echo c > /proc/sysrq-trigger; sleep 1000"], edit=edit)
    husk("run", "-d", "-b", b, cid, check=True)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the panicked container to be reported stopped", 120)
    assert husk.state_file(cid).get("exit_code") == 255
    with open(os.path.join(husk.root, cid, "console.log"), errors="replace") as f:
        assert "sysrq" in f.read().lower()  # the console kept the panic for whoever looks
    husk("delete", cid, check=True)


def test_state_root_wiped_then_same_id(husk, bundle):
    # A host reboot empties /run: containers are gone with their state. A
    # leftover directory whose processes are dead (pids possibly reused)
    # reads as stopped, can be deleted, and the id can be used again.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    st = husk.state_file(cid)
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: pid_gone(st["vmm_pid"]), "the VM to go")
    # Make it look like another boot: the recorded pid now names a live,
    # unrelated process (ours), with another start time.
    st["pid"] = os.getpid()
    with open(os.path.join(husk.root, cid, "state.json"), "w") as f:
        json.dump(st, f)
    assert husk.state(cid)["status"] == "stopped"
    r = husk("create", "-b", bundle(["true"]), cid)
    assert r.returncode != 0 and b"container with id exists" in r.stderr
    husk("delete", cid, check=True)
    assert os.path.exists(f"/proc/{os.getpid()}")  # delete did not kill the unrelated pid
    r = husk("run", "-b", bundle(["echo", "again"]), cid)
    assert r.returncode == 0 and r.stdout == b"again\n", r.stderr
    # A reboot proper: every process gone and /run emptied.
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    st = husk.state_file(cid)
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: pid_gone(st["vmm_pid"]), "the old VM to go")
    subprocess.run(["rm", "-rf", os.path.join(husk.root, cid)], check=True)
    r = husk("run", "-b", bundle(["echo", "fresh"]), cid)
    assert r.returncode == 0 and r.stdout == b"fresh\n", r.stderr


def test_full_state_root(husk, bundle, tmp_path):
    # No space left where the state goes: a clear error, nothing left.
    root = tmp_path / "tiny"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(root)], check=True)
    try:
        with open(root / "filler", "wb") as f:
            try:
                f.write(b"x" * (64 << 10))
            except OSError:
                pass
        r = subprocess.run([husk.cmd()[0], "--root", str(root), "create", "-b", bundle(["true"]), "full"],
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
        assert r.returncode != 0
        assert b"No space left on device" in r.stderr, r.stderr
        assert sorted(os.listdir(root)) == ["filler"]
    finally:
        subprocess.run(["umount", str(root)], check=False)
