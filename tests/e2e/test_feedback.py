"""What a user waiting on husk sees (issue 28): one line per long step
(a KVM probe, a template's first boot) when stderr is a terminal, nothing
when it is not, and --debug's timeline of a container's start."""
import os
import re
import subprocess

import pytest

from conftest import DRIVER, KVM_SHAPE, new_id

TEMPLATE_LINE = ("husk: the first container of its VM shape: booting a VM to save as a template "
                 "(once; the next ones start from it)")
PROBE_LINE = "husk: probing KVM: one guest boot tells whether it runs here (once per host boot, up to 10 s)"


def on_terminal(cmd, env=None, timeout=240):
    """Run `cmd` with its stderr on a pty (stdin and stdout elsewhere); what
    the terminal showed, and the exit status."""
    master, slave = os.openpty()
    seen = b""
    try:
        with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
            p = subprocess.Popen(cmd, stdin=null_in, stdout=null_out, stderr=slave, env=env)
            os.close(slave)
            slave = -1
            while True:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every holder of the pty's other end is gone
                    break
                if not chunk:
                    break
                seen += chunk
            rc = p.wait(timeout=timeout)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return seen.decode(errors="replace").replace("\r\n", "\n"), rc


def timeline(stderr):
    m = re.search(r'msg="timeline: (.*) \(since the shim began\)"', stderr)
    assert m, stderr[-3000:]
    steps = [re.fullmatch(r"(.+) (\d+) ms", s).groups() for s in m.group(1).split(", ")]
    names = [n for n, _ in steps]
    ms = [int(t) for _, t in steps]
    return names, ms


@pytest.mark.not_on(("uml", "firecracker", "cloud-hypervisor"), reason="QEMU's templates (test_templates.py)")
@pytest.mark.skipif(KVM_SHAPE, reason="the KVM configuration (microvm) has no templates")
def test_a_templates_first_boot_says_so_on_a_terminal_and_nowhere_else(husk, bundle, tmp_path):
    b = bundle(["true"])
    husk("features", check=True)  # the accelerator's probe, if this boot has not had it yet: not this test's line
    env = dict(os.environ, HUSK_TEMPLATE_DIR=str(tmp_path / "t1"))
    first, rc = on_terminal(husk.cmd("run", "-b", b, new_id()), env)
    assert rc == 0, first
    assert first.splitlines() == [TEMPLATE_LINE]
    # The next one restores it: a wait too short to mention.
    second, rc = on_terminal(husk.cmd("run", "-b", b, new_id()), env)
    assert rc == 0 and second == "", second
    # Not a terminal (a client's pipe, a log file): nothing at all.
    env = dict(os.environ, HUSK_TEMPLATE_DIR=str(tmp_path / "t2"))
    r = husk("run", "-b", b, new_id(), env=env)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    assert os.listdir(tmp_path / "t2")  # it did make one


def test_the_kvm_probe_says_so_on_a_terminal_once(husk):
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as e:
        pytest.skip(f"no /dev/kvm to probe here ({e.strerror}): husk takes TCG without a probe")
    if os.environ.get("HUSK_ACCEL"):
        pytest.skip("HUSK_ACCEL is set: husk takes it without a probe")
    # A /run of its own, so that the probe's cache (/run/husk-accel.json)
    # starts empty here and no other test sees it go.
    twice = ["unshare", "-m", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs none /run && "$@" features >/dev/null && echo === >&2 && "$@" features >/dev/null',
             "sh", *husk.cmd()]
    seen, rc = on_terminal(twice)
    assert rc == 0, seen
    assert seen.splitlines() == [PROBE_LINE, "==="]
    r = subprocess.run(twice, capture_output=True, timeout=240)
    assert r.returncode == 0 and r.stderr == b"===\n", r.stderr


def test_debug_prints_a_timeline_of_the_start(husk, bundle):
    b = bundle(["true"])
    r = husk("run", "-b", b, new_id(), glob=("--debug",), env=dict(os.environ, HUSK_TEMPLATES="0"))
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    names, ms = timeline(r.stderr.decode(errors="replace"))
    assert ms == sorted(ms), (names, ms)
    order = ["VMM launched", "VMM up", "agent up", "container created"]
    if DRIVER == "qemu":  # its console is the serial line the shim reads from the first byte
        order[2:2] = ["kernel console up", "agent started", "share mounted"]
    assert [n for n in names if n in order] == order, names
    assert "template restored" not in names


@pytest.mark.not_on(("uml", "firecracker", "cloud-hypervisor"), reason="QEMU's templates (test_templates.py)")
@pytest.mark.skipif(KVM_SHAPE, reason="the KVM configuration (microvm) has no templates")
def test_a_restored_vms_timeline_has_no_boot(husk, bundle, tmp_path):
    b = bundle(["true"])
    env = dict(os.environ, HUSK_TEMPLATE_DIR=str(tmp_path / "t"))
    for _ in range(2):
        r = husk("run", "-b", b, new_id(), glob=("--debug",), env=env)
        assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    names, ms = timeline(r.stderr.decode(errors="replace"))
    assert ms == sorted(ms)
    assert [n for n in names if n in ("VMM up", "template restored", "attached", "agent up", "container created")] == \
        ["VMM up", "template restored", "attached", "agent up", "container created"], names
    assert "kernel console up" not in names and "agent started" not in names
