"""Terminals: process.terminal with --console-socket (podman's and
containerd's way), husk showing the terminal itself in the foreground
(runc's way), and exec -t. Window sizes, raw bytes and ^C behave as on a
local terminal."""
import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

from conftest import new_id


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Term:
    """A pty master and everything read from it so far."""

    def __init__(self, fd):
        self.fd = fd
        self.seen = b""

    def expect(self, text, timeout=60):
        deadline = time.time() + timeout
        while text not in self.seen:
            left = deadline - time.time()
            assert left > 0, f"{text!r} not seen; got {self.seen!r}"
            r, _, _ = select.select([self.fd], [], [], min(left, 0.2))
            if r:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # EIO: the other side is gone
                    data = b""
                assert data, f"terminal closed before {text!r}; got {self.seen!r}"
                self.seen += data
        return self.seen

    def send(self, data):
        os.write(self.fd, data)


def spawn_in_pty(argv, rows=33, cols=111):
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    set_size(fd, rows, cols)
    return pid, Term(fd)


class ConsoleSocket:
    """A --console-socket listener, as conmon and containerd run one."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.master = None
        self.name = None
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        conn, _ = self.sock.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        self.name, self.master = msg.decode(), fds[0]
        conn.close()

    def receive(self, timeout=120):
        self.thread.join(timeout)
        assert self.master is not None, "no pty master arrived on the console socket"
        return Term(self.master)


def test_run_shows_the_terminal_in_the_foreground(husk, bundle):
    def edit(c):
        c["process"]["terminal"] = True
    # The terminal is also the container's /dev/console (runc's
    # mountConsole): the same device (136:0, hex), and what is written
    # there reaches the caller.
    b = bundle(["sh", "-c", "tty; stty size; stat -c console=%t:%T /dev/console; echo via-console >/dev/console; "
                "read x; echo got-$x; exit 4"], edit=edit)
    tmp = os.path.join(b, "tmpdir")
    os.mkdir(tmp)
    os.environ["TMPDIR"] = tmp  # where husk puts its console socket
    try:
        pid, t = spawn_in_pty(husk.cmd("run", "-b", b, new_id()), rows=33, cols=111)
    finally:
        del os.environ["TMPDIR"]
    t.expect(b"33 111")
    t.expect(b"via-console")
    assert b"/dev/pts/0" in t.seen
    assert b"console=88:0" in t.seen, t.seen
    # The socket has done its job once the terminal arrived: nothing of it
    # is left for a SIGKILLed husk to leave behind.
    assert os.listdir(tmp) == []
    t.send(b"abc\r")
    out = t.expect(b"got-abc")
    assert b"abc\r\n" in out  # the guest's terminal echoed it
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 4


def test_console_socket_on_create(husk, bundle, tmp_path):
    def edit(c):
        c["process"]["terminal"] = True
        c["process"]["consoleSize"] = {"height": 20, "width": 70}
    cid = new_id()
    cs = ConsoleSocket(tmp_path / "console.sock")
    # create's stdout and stderr reach EOF when it exits: with a terminal,
    # nothing left behind holds the caller's stdio (containerd's runc shim
    # reads them to EOF before it goes on).
    p = subprocess.Popen(husk.cmd("create", "--console-socket", cs.path, "-b", bundle(["sh"], edit=edit), cid),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err
    t = cs.receive()
    assert cs.name.startswith("/dev/pts/")
    husk("start", cid, check=True)
    t.send(b"stty size\r")
    t.expect(b"20 70")  # process.consoleSize
    # The caller resizes its master: the guest follows.
    set_size(t.fd, 44, 132)
    t.send(b"stty size\r")
    t.expect(b"44 132")
    # ^C interrupts the foreground job in the guest, not the container.
    t.send(b"sleep 100\r")
    time.sleep(1)
    t.send(b"\x03")
    t.send(b"echo after-$?\r")
    t.expect(b"after-130")
    # Raw bytes pass untouched both ways.
    t.send(b"printf '\\001\\177\\033[0m|'; echo\r")
    t.expect(b"\x01\x7f\x1b[0m|")
    t.send(b"exit 6\r")
    deadline = time.time() + 30
    while husk.state(cid)["status"] != "stopped":
        assert time.time() < deadline
        time.sleep(0.1)
    husk("delete", cid, check=True)
    os.close(t.fd)


def test_exec_tty_interactive_and_detached(husk, bundle, tmp_path):
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)

    # In the foreground husk shows the terminal; its size follows ours.
    pid, t = spawn_in_pty(husk.cmd("exec", "-t", cid, "sh"), rows=25, cols=90)
    t.send(b"stty size; tty\r")
    t.expect(b"25 90")
    set_size(t.fd, 50, 132)
    os.kill(pid, signal.SIGWINCH)
    time.sleep(0.5)
    t.send(b"stty size\r")
    t.expect(b"50 132")
    t.send(b"sleep 100\r")
    time.sleep(1)
    t.send(b"\x03")
    t.send(b"echo after-$?; exit 5\r")
    t.expect(b"after-130")
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 5

    # A process that lets go of its terminal for a while (as systemd does,
    # opening /dev/console only to write) still has it: the output after
    # that reaches us, and its exit status too.
    pid, t = spawn_in_pty(husk.cmd("exec", "-t", cid, "sh", "-c",
                                   "exec </dev/null >/dev/null 2>&1; sleep 2; echo late-line >/dev/tty; exit 7"))
    t.expect(b"late-line")
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 7

    # Detached, the master goes to --console-socket and the pid file names
    # the process that exits with the exec'd one.
    cs = ConsoleSocket(tmp_path / "exec.sock")
    pidfile = tmp_path / "exec.pid"
    r = husk("exec", "-d", "-t", "--console-socket", cs.path, "--pid-file", str(pidfile), cid, "sh")
    assert r.returncode == 0, r.stderr
    t = cs.receive()
    epid = int(pidfile.read_text())
    t.send(b"echo in-exec; exit 9\r")
    t.expect(b"in-exec")
    _, st = os.waitpid(epid, 0)
    assert os.waitstatus_to_exitcode(st) == 9
    os.close(t.fd)
    husk("delete", "--force", cid, check=True)


def test_terminal_needs_a_console_socket(husk, bundle):
    def edit(c):
        c["process"]["terminal"] = True
    r = husk("create", "-b", bundle(["sh"], edit=edit), new_id())
    assert r.returncode != 0 and b"no --console-socket was given" in r.stderr
