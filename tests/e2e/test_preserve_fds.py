"""--preserve-fds N (issue 24): fds 3..3+N-1 of the caller reach the
container's process at the same numbers, as runc passes them. A VM cannot
share a host fd, so each is relayed: a pipe in the guest for an fd opened
read-only or write-only, a socketpair for one opened read-write."""
import os
import shutil
import socket
import subprocess
import threading
import uuid

import pytest

from conftest import new_id
from test_exec import running

RUNC = shutil.which("runc")

# What the process sees of its fds 3-6 (no command substitution: its pipe
# would be the shell's next fd).
FD_TYPES = 'for f in 3 4 5 6; do readlink /proc/$$/fd/$f || echo none; done'


def fd_types(out):
    """readlink's lines as types: pipe:[123] -> pipe."""
    return [l.split(":")[0] for l in out.decode().split("\n")[:4]]


def with_fds(cmd, fds, **kw):
    """Run cmd with `fds` at 3, 4, ... (bash places them; the originals are
    closed), stdout and stderr captured."""
    # Out of the way first (an original may itself be 3 or 4), then in place.
    lift = [f"{100 + i}<&{fd} {fd}<&-" for i, fd in enumerate(fds)]
    place = [f"{3 + i}<&{100 + i} {100 + i}<&-" for i in range(len(fds))]
    redirs = " ".join(lift + place)
    return subprocess.run(["bash", "-c", f'exec "$@" {redirs}', "bash", *cmd], pass_fds=fds, capture_output=True,
                          stdin=kw.pop("stdin", subprocess.DEVNULL), timeout=kw.pop("timeout", 120), **kw)


class Peers:
    """fd 3: a pipe the container reads; fd 4: a pipe it writes; fd 5: a
    socketpair end it talks on. The host ends are served by threads."""

    def __init__(self, to_guest):
        self.in_r, in_w = os.pipe()
        out_r, self.out_w = os.pipe()
        self.sock_host, sock_guest = socket.socketpair()
        self.sock_guest = sock_guest.detach()
        self.got_pipe, self.got_sock = b"", b""

        def feed():
            os.write(in_w, to_guest)
            os.close(in_w)

        def drain():
            with os.fdopen(out_r, "rb") as f:
                self.got_pipe = f.read()

        def talk():
            self.sock_host.sendall(b"ping\n")
            chunks = []
            while True:
                c = self.sock_host.recv(4096)
                if not c:
                    break
                chunks.append(c)
            self.got_sock = b"".join(chunks)

        self.threads = [threading.Thread(target=t, daemon=True) for t in (feed, drain, talk)]
        for t in self.threads:
            t.start()

    def fds(self):
        return [self.in_r, self.out_w, self.sock_guest]

    def close_ours(self):
        """Our copies of the container's ends: only husk holds them now."""
        for fd in self.fds():
            os.close(fd)

    def join(self):
        for t in self.threads:
            t.join(60)
        self.sock_host.close()


SCRIPT = FD_TYPES + '; cat <&3 >&4; read x <&5; echo "pong-$x" >&5'


def test_run_relays_each_preserved_fd_the_way_it_was_opened(husk, bundle):
    b = bundle(["sh", "-c", SCRIPT])
    p = Peers(b"to-guest\n" * 2000)  # more than one DATA frame
    r = with_fds(husk.cmd("run", "--preserve-fds", "3", "-b", b, new_id()), p.fds())
    p.close_ours()
    p.join()
    assert r.returncode == 0, r.stderr
    # Pipes stay pipes; the read-write fd is a socket, and fd 6 is not there.
    assert fd_types(r.stdout) == ["pipe", "pipe", "socket", "none"]
    assert p.got_pipe == b"to-guest\n" * 2000
    assert p.got_sock == b"pong-ping\n"


@pytest.mark.skipif(RUNC is None, reason="runc is not installed (scripts/deps installs it)")
def test_preserved_fds_look_as_under_runc(husk, bundle, tmp_path):
    b = bundle(["sh", "-c", SCRIPT])
    outs = []
    for tool in ("husk", "runc"):
        p = Peers(b"same\n")
        cmd = husk.cmd("run", "--preserve-fds", "3", "-b", b, new_id()) if tool == "husk" else \
            [RUNC, "--root", str(tmp_path / "runc"), "run", "--preserve-fds", "3", "-b", b, "r" + uuid.uuid4().hex[:8]]
        r = with_fds(cmd, p.fds())
        p.close_ours()
        p.join()
        assert r.returncode == 0, (tool, r.stderr)
        outs.append((fd_types(r.stdout), r.stdout.decode().split("\n")[4:], p.got_pipe, p.got_sock))
    # The one difference by design: runc hands over the socket itself, husk
    # one end of a socketpair; both read "socket" and talk alike.
    assert outs[0] == outs[1]


def test_exec_preserves_files_both_ways_and_detached(husk, bundle, tmp_path):
    cid = running(husk, bundle)
    src = tmp_path / "in.txt"
    src.write_bytes(b"from a file\n")
    log = tmp_path / "out.log"
    log.write_bytes(b"before\n")
    rd = os.open(src, os.O_RDONLY)
    wr = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        r = with_fds(husk.cmd("exec", "--preserve-fds", "2", cid, "sh", "-c", "cat <&3 >&4; echo $? >&4"), [rd, wr])
        assert r.returncode == 0, r.stderr
        assert log.read_bytes() == b"before\nfrom a file\n0\n"
        # Detached: the relay stands in; what the process writes still arrives.
        done = tmp_path / "done"
        r = with_fds(husk.cmd("exec", "-d", "--pid-file", str(done), "--preserve-fds", "1", cid,
                              "sh", "-c", "echo detached >&3"), [wr])
        assert r.returncode == 0, r.stderr
        relay = int(done.read_text())
        for _ in range(600):
            if not os.path.exists(f"/proc/{relay}") or open(f"/proc/{relay}/stat").read().split()[2] == "Z":
                break
            threading.Event().wait(0.1)
        assert log.read_bytes().endswith(b"detached\n")
    finally:
        os.close(rd)
        os.close(wr)
    husk("delete", "--force", cid, check=True)


def test_what_cannot_be_relayed_is_refused_by_name(husk, bundle):
    b = bundle(["true"])
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    try:
        r = with_fds(husk.cmd("run", "--preserve-fds", "1", "-b", b, new_id()), [lst.fileno()])
        assert r.returncode != 0
        assert b"--preserve-fds: fd 3 is a listening socket" in r.stderr, r.stderr
    finally:
        lst.close()
    # Two asked for, one given: fd 4 is not open.
    rd, wr = os.pipe()
    try:
        r = with_fds(husk.cmd("run", "--preserve-fds", "2", "-b", b, new_id()), [rd])
        assert r.returncode != 0
        assert b"--preserve-fds: fd 4 is not open" in r.stderr, r.stderr
    finally:
        os.close(rd)
        os.close(wr)
    # Nothing was started: the fixture checks no state, VMM or mount is left.


def test_a_pod_member_gets_its_preserved_fds(husk, bundle, tmp_path):
    """A container that joins a pod's VM: its fds go with its relay."""
    from test_pod import ns_paths, start_sandbox
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "cat /proc/sys/kernel/random/boot_id; exec sleep 1000")
    b = bundle(["sh", "-c", SCRIPT + "; cat /proc/sys/kernel/random/boot_id"], edit=ns_paths(spid))
    p = Peers(b"member\n")
    mid = new_id()
    r = with_fds(husk.cmd("run", "--preserve-fds", "3", "-b", b, mid), p.fds())
    p.close_ours()
    p.join()
    assert r.returncode == 0, r.stderr
    assert fd_types(r.stdout) == ["pipe", "pipe", "socket", "none"]
    assert (p.got_pipe, p.got_sock) == (b"member\n", b"pong-ping\n")
    assert r.stdout.decode().split("\n")[4] == sout.read_text().strip()  # the sandbox's VM
    husk("delete", "--force", sid, check=True)
