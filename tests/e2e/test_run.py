"""husk run: output from the guest, stdio both ways, exit codes, signals."""
import hashlib
import os
import signal
import subprocess
import time

from conftest import new_id


def test_run_prints_from_the_guest_and_mirrors_exit_code(husk, bundle):
    b = bundle(["sh", "-c", "echo hello from husk; cat /proc/version; exit 7"])
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 7, r.stderr
    out = r.stdout.decode()
    assert "hello from husk" in out
    # The guest kernel is the one rootfs-builder packed, not the host's.
    assert "Debian" in out and "6.1." in out


def test_exit_zero(husk, bundle):
    r = husk("run", "-b", bundle(["true"]), new_id())
    assert r.returncode == 0, r.stderr


def test_a_create_request_of_many_kilobytes_gets_through(husk, bundle):
    # A long command line (or a big seccomp profile) makes a create request
    # larger than a tty's 4 KiB buffer: UML's console-line channel stalled
    # on it until the agent acknowledged what it read (channel_window).
    pad = "x" * 20000
    r = husk("run", "-b", bundle(["sh", "-c", 'echo ${#0}', pad]), new_id(), timeout=120)
    assert r.returncode == 0 and r.stdout == b"20000\n", r.stderr


def test_stdin_stdout_stderr_are_separate_and_eof_propagates(husk, bundle):
    b = bundle(["sh", "-c", "cat; echo to-stderr >&2; echo after-eof"])
    r = husk("run", "-b", b, new_id(), input=b"line one\nline two\n")
    assert r.returncode == 0, r.stderr
    # cat only ends if EOF on our stdin reached the guest.
    assert r.stdout == b"line one\nline two\nafter-eof\n"
    assert r.stderr == b"to-stderr\n"


def test_large_output_arrives_intact(husk, bundle):
    # 4 MiB of pseudo-random bytes through the flow-controlled channel.
    b = bundle(["sh", "-c", "head -c 4194304 /dev/urandom | tee /tmp/x | md5sum >&2; cat /tmp/x"])
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 4194304
    assert hashlib.md5(r.stdout).hexdigest() == r.stderr.decode().split()[0]


def test_large_input_arrives_intact(husk, bundle):
    data = os.urandom(2 * 1024 * 1024)
    b = bundle(["sh", "-c", "md5sum | cut -d' ' -f1"])
    r = husk("run", "-b", b, new_id(), input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == hashlib.md5(data).hexdigest()


def test_stdout_to_a_file(husk, bundle, tmp_path):
    out = tmp_path / "out.txt"
    b = bundle(["sh", "-c", "echo into-a-file"])
    with open(out, "wb") as f:
        r = subprocess.run(husk.cmd("run", "-b", b, new_id()), stdout=f, stderr=subprocess.PIPE, timeout=240)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b"into-a-file\n"


def no_pid_ns(c):
    # A pid-namespace init cannot be SIGKILLed from inside its namespace
    # (the kernel ignores it, under runc too), so this workload runs
    # without one.
    c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "pid"]


def test_killed_by_signal_inside_kills_husk_run_with_it(husk, bundle):
    b = bundle(["sh", "-c", "kill -9 $$"], edit=no_pid_ns)
    r = husk("run", "-b", b, new_id())
    assert r.returncode == -signal.SIGKILL
    # ... which a shell reports as 137.
    b2 = bundle(["sh", "-c", "kill -9 $$"], edit=no_pid_ns)
    sh = subprocess.run(["sh", "-c", " ".join(husk.cmd("run", "-b", b2, new_id())) + "; echo status=$?"],
                        capture_output=True, timeout=240)
    assert b"status=137" in sh.stdout


def test_signals_to_husk_run_reach_the_container(husk, bundle):
    b = bundle(["sh", "-c", "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done"])
    p = subprocess.Popen(husk.cmd("run", "-b", b, new_id()), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, err
    assert out == b"got-term\n"


def test_run_detach_then_kill_and_delete(husk, bundle):
    cid = new_id()
    b = bundle(["sleep", "1000"])
    r = husk("run", "--detach", "-b", b, cid, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert husk.state(cid)["status"] == "running"
    husk("kill", cid, "KILL", check=True)
    deadline = time.time() + 30
    while husk.state(cid)["status"] != "stopped":
        assert time.time() < deadline
        time.sleep(0.1)
    husk("delete", cid, check=True)


def test_closed_stdin_reads_as_eof(husk, bundle):
    b = bundle(["sh", "-c", "cat; echo cat-ended"])
    cmd = " ".join(husk.cmd("run", "-b", b, new_id()))
    r = subprocess.run(["sh", "-c", f"exec 0<&-; {cmd}"], capture_output=True, timeout=240)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"cat-ended\n"
