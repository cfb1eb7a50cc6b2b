"""husk exec: processes in a running container, as runc runs them."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import threading
import time

from conftest import new_id


def running(husk, bundle, args=("sleep", "1000"), edit=None):
    cid = new_id()
    husk("run", "-d", "-b", bundle(list(args), edit=edit), cid, check=True)
    return cid


def wait_for(path, text, timeout=60):
    deadline = time.time() + timeout
    while text not in open(path, "rb").read():
        assert time.time() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.1)


def test_exec_stdio_status_and_namespaces(husk, bundle, tmp_path):
    cid = running(husk, bundle, edit=lambda c: c.update(hostname="box"))
    r = husk("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")

    # The exec joins the init's namespaces: pid (the init is its pid 1),
    # mount, uts, ipc, cgroup.
    r = husk("exec", cid, "sh", "-c",
             "tr \"\\\\0\" \" \" < /proc/1/cmdline; echo; hostname; "
             "for n in pid mnt uts ipc cgroup; do [ $(readlink /proc/1/ns/$n) = $(readlink /proc/self/ns/$n) ] "
             "&& echo same-$n; done", check=True)
    assert r.stdout.decode().split() == ["sleep", "1000", "box", "same-pid", "same-mnt", "same-uts", "same-ipc",
                                         "same-cgroup"]

    # stdin reaches the process and its EOF ends it.
    r = husk("exec", cid, "sh", "-c", "cat; echo done", input=b"hello\n" * 1000, check=True)
    assert r.stdout == b"hello\n" * 1000 + b"done\n"

    # runc's overrides: env adds (a later value wins), cwd and user replace.
    r = husk("exec", "--env", "FOO=bar", "--env", "PATH=/bin:/usr/bin", "--cwd", "/tmp", "--user", "1000:1001",
             cid, "sh", "-c", 'echo $FOO $PATH; env | grep -c ^PATH=; pwd; id -u; id -g', check=True)
    assert r.stdout.decode().split() == ["bar", "/bin:/usr/bin", "1", "/tmp", "1000", "1001"]
    # Without overrides it runs as the config's process does (env from config.json).
    r = husk("exec", cid, "sh", "-c", "echo $PATH $TERM; id -u", check=True)
    assert r.stdout.decode().split() == ["/bin", "xterm", "0"]

    # --process: an OCI process object.
    proc = tmp_path / "process.json"
    proc.write_text(json.dumps({"args": ["sh", "-c", "echo $X; pwd"], "env": ["X=from-file", "PATH=/bin"],
                                "cwd": "/etc", "user": {"uid": 0, "gid": 0}}))
    r = husk("exec", "--process", str(proc), cid, check=True)
    assert r.stdout.decode().split() == ["from-file", "/etc"]

    # A process killed by a signal: husk exec dies of the same one.
    r = husk("exec", cid, "sh", "-c", "kill -TERM $$")
    assert r.returncode == -signal.SIGTERM

    # A command that is not there: runc's message and status 255.
    r = husk("exec", cid, "no-such-command")
    assert r.returncode == 255
    assert b'exec: "no-such-command": executable file not found in $PATH' in r.stderr
    # Bad input is refused before anything runs.
    for args, msg in [(["--user", "bob", cid, "true"], b"--user: expected UID[:GID]"),
                      (["--cwd", "rel", cid, "true"], b"--cwd must be an absolute path"),
                      (["--env", "NOEQUALS", cid, "true"], b"--env: expected KEY=VALUE"),
                      ([cid], b"no command given"),
                      (["-d", "-t", cid, "sh"], b"no --console-socket"),
                      (["--console-socket", "/tmp/x.sock", cid, "true"], b"needs a terminal")]:
        r = husk("exec", *args)
        assert r.returncode == 255 and msg in r.stderr, (args, r.stderr)
    proc.write_text(json.dumps({"args": "sh", "cwd": "/"}))
    r = husk("exec", "--process", str(proc), cid)
    assert r.returncode == 255 and b"process.json: args: expected array, got string" in r.stderr
    # The container is untouched by all of it.
    assert husk.state(cid)["status"] == "running"
    husk("delete", "--force", cid, check=True)


def test_exec_detach_pid_file_and_signals(husk, bundle, tmp_path):
    cid = running(husk, bundle)
    out = tmp_path / "out"
    pidfile = tmp_path / "exec.pid"
    with open(out, "wb") as f:
        r = husk("exec", "-d", "--pid-file", str(pidfile), cid, "sh", "-c",
                 "trap 'echo got-usr1' USR1; trap 'echo bye; exit 3' TERM; echo ready; "
                 "while true; do sleep 0.1; done", stdout=f)
    assert r.returncode == 0, r.stderr
    wait_for(out, b"ready")
    pid = int(pidfile.read_text())
    # The pid stands for the exec'd process: signals to it reach the guest...
    os.kill(pid, signal.SIGUSR1)
    wait_for(out, b"got-usr1")
    os.kill(pid, signal.SIGTERM)
    # ...and its exit status is the process's (we are its subreaper).
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 3
    assert open(out, "rb").read().endswith(b"bye\n")
    assert husk.state(cid)["status"] == "running"

    # Many at once, each with its own stdio.
    procs = []
    for i in range(8):
        o = open(tmp_path / f"o{i}", "wb+")
        p = subprocess.Popen(husk.cmd("exec", cid, "sh", "-c", f"for j in 1 2 3; do echo {i}-$j; done; "
                                                               f"cat; exit {i}"),
                             stdin=subprocess.PIPE, stdout=o, stderr=subprocess.PIPE)
        procs.append((i, p, o))
    for i, p, o in procs:
        p.stdin.write(f"in-{i}\n".encode())
        p.stdin.close()
    for i, p, o in procs:
        assert p.wait(timeout=120) == i, p.stderr.read()
        o.seek(0)
        assert o.read() == f"{i}-1\n{i}-2\n{i}-3\nin-{i}\n".encode()

    # The container ends with its init: a running exec is killed with it.
    with open(out, "wb") as f:
        husk("exec", "-d", "--pid-file", str(pidfile), cid, "sleep", "1000", stdout=f, check=True)
    pid = int(pidfile.read_text())
    husk("kill", cid, "KILL", check=True)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == -signal.SIGKILL
    deadline = time.time() + 30
    while husk.state(cid)["status"] != "stopped":
        assert time.time() < deadline
        time.sleep(0.1)
    r = husk("exec", cid, "true")
    assert r.returncode == 255 and b"cannot exec in a stopped container" in r.stderr
    husk("delete", cid, check=True)


def test_exec_in_created_container(husk, bundle, tmp_path):
    # As with runc, a created container already has its namespaces and
    # mounts: exec works before start.
    cid = new_id()
    with open(tmp_path / "out", "wb") as f:
        husk("create", "-b", bundle(["echo", "init-ran"]), cid, stdout=f, check=True)
    r = husk("exec", cid, "sh", "-c", "[ $(readlink /proc/1/ns/mnt) = $(readlink /proc/self/ns/mnt) ] && echo same",
             check=True)
    assert r.stdout == b"same\n"
    assert husk.state(cid)["status"] == "created"
    r = husk("exec", "nonexistent", "true")
    assert r.returncode == 255 and b"container does not exist" in r.stderr
    husk("delete", cid, check=True)
    assert open(tmp_path / "out", "rb").read() == b""


def test_many_quick_execs_at_once_all_report_their_status(husk, bundle):
    # A process that exits at once: its exit can reach the caller in the
    # same read as the reply that started it. With several busy VMs that is
    # common; every caller must still get its own status (it once got 255).
    cids = [new_id() for _ in range(3)]
    procs = [subprocess.Popen(husk.cmd("run", "-d", "-b", bundle(["sleep", "1000"]), c), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in cids]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    for _ in range(3):
        procs = [(i, subprocess.Popen(husk.cmd("exec", c, "sh", "-c", f"exit {i}"), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                 for c in cids for i in range(6)]
        for i, p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == i, (i, p.returncode, err)
    for c in cids:
        husk("delete", "--force", c, check=True)


def test_exec_output_into_a_pipe_and_a_socket_arrives_intact(husk, bundle):
    # The shim writes a pipe through its own O_NONBLOCK reopening and a
    # socket with MSG_DONTWAIT, in pieces of any size, and returns credit
    # in batches: 8 MiB must still arrive whole, in order, and end (EOF).
    cid = running(husk, bundle)
    script = "head -c 8388608 /dev/urandom > /tmp/x; md5sum < /tmp/x >&2; cat /tmp/x"
    r = husk("exec", cid, "sh", "-c", script)  # stdout: a pipe
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 8388608
    assert hashlib.md5(r.stdout).hexdigest() == r.stderr.decode().split()[0]

    mine, theirs = socket.socketpair()
    got = []
    reader = threading.Thread(target=lambda: got.extend(iter(lambda: mine.recv(1 << 20), b"")))
    reader.start()
    p = subprocess.run(husk.cmd("exec", cid, "sh", "-c", "cat /tmp/x"), stdout=theirs, stderr=subprocess.PIPE,
                       timeout=240)
    theirs.close()
    reader.join(60)
    assert not reader.is_alive(), "no EOF on the socket"
    assert p.returncode == 0, p.stderr
    assert hashlib.md5(b"".join(got)).hexdigest() == r.stderr.decode().split()[0]
    husk("delete", "--force", cid, check=True)
