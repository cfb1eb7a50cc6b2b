"""fd hygiene (issue 26). A caller may hold any number of inheritable fds,
however high (runc's CVE-2024-21626 was one leaked fd): none of them
reaches the shim, the VMM's jail, the VMM, virtiofsd or a hook on the host,
and in the guest the container's init and an exec'd process hold exactly
0-2, plus what --preserve-fds passes."""
import os
import resource
import subprocess

import pytest

from conftest import new_id

N = 1100  # more than select()'s 1024: a loop to 1023 misses the top ones
FD_LIST = "ls /proc/$$/fd; true"  # ls is a child: the list is the shell's own


@pytest.fixture
def many_fds(tmp_path):
    """N inheritable fds of one marker file; yields the marker's path."""
    marker = str(tmp_path / "fd-leak-marker")
    with open(marker, "w") as f:
        f.write("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    fds = [os.open(marker, os.O_RDONLY) for _ in range(N)]
    for fd in fds:
        os.set_inheritable(fd, True)
    assert max(fds) > 1024
    yield marker
    for fd in fds:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def holders(marker):
    """Every process but this one with an fd on the marker."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue  # gone, or not ours to read
        n = links.count(marker)
        if n:
            found.append(f"{comm}[{pid}]: {n} fds")
    return found


def fd_hook(tmp_path, stage):
    # exec: dash keeps a copy of stdout at fd 10 while a command's is redirected.
    return {"path": "/bin/sh", "args": ["sh", "-c", f"exec > {tmp_path}/{stage}.fds; {FD_LIST}"]}


def with_dev_null_at_3(husk, *args):
    """husk with /dev/null at fd 3 and every other fd of ours as it is."""
    return husk(*args, prefix=["bash", "-c", 'exec "$@" 3</dev/null', "bash"], close_fds=False, check=True)


def test_nothing_of_the_callers_fds_leaks_anywhere(husk, bundle, tmp_path, many_fds):
    host_stages = ["createRuntime", "prestart", "poststart", "poststop"]

    def edit(c):
        c["hooks"] = {s: [fd_hook(tmp_path, s)] for s in host_stages}
    cid = new_id()
    b = bundle(["sleep", "1000"], edit=edit)
    # fd 3 is the one the container is given; every other is the caller's own.
    # bash gives it fd 3 (/dev/null), and passes every other fd on as is.
    with_dev_null_at_3(husk, "create", "--preserve-fds", "1", "-b", b, cid)
    assert holders(many_fds) == [], "the caller's fds reached husk's long-lived processes"
    husk("start", cid, check=True, close_fds=False)
    # The container's init: stdio and the one preserved fd, nothing else.
    r = husk("exec", cid, "ls", "/proc/1/fd", check=True, close_fds=False)
    assert r.stdout.split() == [b"0", b"1", b"2", b"3"]
    # An exec'd process: stdio only.
    r = husk("exec", cid, "sh", "-c", FD_LIST, check=True, close_fds=False)
    assert r.stdout.split() == [b"0", b"1", b"2"]
    r = with_dev_null_at_3(husk, "exec", "--preserve-fds", "1", cid, "sh", "-c", FD_LIST)
    assert r.stdout.split() == [b"0", b"1", b"2", b"3"]
    assert holders(many_fds) == []
    husk("kill", cid, "KILL", check=True, close_fds=False)
    husk("delete", "--force", cid, check=True, close_fds=False)
    for s in host_stages:
        assert (tmp_path / f"{s}.fds").read_text().split() == ["0", "1", "2"], f"{s} hook's fds"
