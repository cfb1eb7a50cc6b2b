"""End-to-end fixtures: the real husk binary, real QEMU VMs, busybox bundles.

Every test gets its own --root; after each test the leak check asserts that
no state dir, no husk-shim, no QEMU and no mount of that root is left.
"""
import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
from husktest import processes_mentioning  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("HUSK_BUILD", os.path.join(ROOT, "build"))
HUSK = os.path.join(BUILD, "husk")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
TIMEOUT = 240

PR_SET_CHILD_SUBREAPER = 36
# The suite runs once per driver (scripts/test): HUSK_HYPERVISOR picks it,
# as it does for husk itself.
# Named, so that husk's automatic choice (test_driver_choice.py) does not
# move a test to another driver than the pass is for.
DRIVER = os.environ.setdefault("HUSK_HYPERVISOR", os.environ.get("HUSK_HYPERVISOR") or "qemu")
# The drivers that cannot share a directory: the rootfs is an ext4 copy on a
# disk, so the host does not see what the container writes there.
DISK_DRIVERS = ("firecracker", "cloud-hypervisor")
# QEMU as a KVM host runs it (microvm, virtio-mmio, no templates), under TCG
# (scripts/test's KVM-configuration phase).
KVM_SHAPE = DRIVER == "qemu" and os.environ.get("HUSK_TEST_KVM_SHAPE") == "1"
# VM templates are husk's normal start path: every run of the suite shares
# one store (scripts/test empties it first, so the suite makes its own).
TEMPLATE_DIR = os.environ.setdefault("HUSK_TEMPLATE_DIR", "/tmp/husk-e2e-templates")


def pytest_collection_modifyitems(config, items):
    # What a driver cannot do is in README's support table, with why; its
    # tests are skipped, saying so, on that driver only.
    for item in items:
        for m in item.iter_markers("not_on"):
            drivers = m.args[0] if isinstance(m.args[0], tuple) else (m.args[0],)
            if DRIVER in drivers:
                item.add_marker(pytest.mark.skip(reason=f"{DRIVER}: {m.kwargs['reason']}"))


def pytest_configure(config):
    config.addinivalue_line("markers", "not_on(driver or (drivers...), reason=...): the driver cannot do this (README support table)")
    # Like conmon and containerd-shim: detached shims reparent to us, and
    # we reap them, so exited shims never linger as zombies.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if not os.access(HUSK, os.X_OK):
        raise pytest.UsageError(f"{HUSK} not built (run scripts/test or meson/ninja first)")


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def make_rootfs(path):
    os.makedirs(os.path.join(path, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(path, "bin", a))
    os.makedirs(os.path.join(path, "etc"))
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
    with open(os.path.join(path, "etc", "group"), "w") as f:
        f.write("root:x:0:\nwheel:x:10:\nuser:x:1000:\n")
    for d in ("proc", "sys", "dev", "tmp", "root"):
        os.makedirs(os.path.join(path, d), exist_ok=True)


@pytest.fixture(scope="session")
def rootfs_template(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("template") / "rootfs")
    make_rootfs(p)
    return p


def default_spec_bundle(tmp_path, args):
    """A bundle as a user makes one: `husk spec`'s config.json (runc's
    default), a busybox rootfs, no terminal, `args` the process."""
    b = os.path.join(str(tmp_path), f"spec-{uuid.uuid4().hex[:6]}")
    os.makedirs(b)
    subprocess.run([HUSK, "spec", "-b", b], check=True)
    make_rootfs(os.path.join(b, "rootfs"))
    with open(os.path.join(b, "config.json")) as f:
        c = json.load(f)
    c["process"].update(terminal=False, args=args)
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(c, f)
    return b


def base_config(args):
    with open(os.path.join(ROOT, "tests", "e2e", "base-config.json")) as f:
        c = json.load(f)
    c["process"]["args"] = args
    return c


class Husk:
    """Drives the built husk binary against one state root."""

    def __init__(self, root, tmp):
        self.root = root
        self.tmp = tmp
        self.ids = set()  # every container this test made: none may leave a host cgroup

    def cmd(self, *args, glob=()):
        return [HUSK, "--root", self.root, *glob, *args]

    def __call__(self, *args, input=None, timeout=TIMEOUT, check=False, glob=(), env=None, prefix=(), **kw):
        if args and args[0] in ("create", "run", "restore"):
            self.ids.add(args[-1])
        # stdout/stderr go to files, not pipes: after `create` or `run -d`
        # the shim keeps them open (as runc's init does), so a pipe would
        # never reach EOF.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            if input is None and "stdin" not in kw:
                kw["stdin"] = subprocess.DEVNULL
            p = subprocess.run([*prefix, *self.cmd(*args, glob=glob)], input=input, stdout=kw.pop("stdout", out),
                               stderr=err, timeout=timeout, env=env, **kw)
            out.seek(0)
            err.seek(0)
            r = subprocess.CompletedProcess(p.args, p.returncode, out.read(), err.read())
        if check and r.returncode != 0:
            raise AssertionError(f"husk {' '.join(args)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
        return r

    def state(self, cid):
        r = self("state", cid, check=True)
        return json.loads(r.stdout)

    def state_file(self, cid):
        """husk's own state.json (the VMM's pid, exit status, ...)."""
        with open(os.path.join(self.root, cid, "state.json")) as f:
            return json.load(f)


@pytest.fixture
def husk(tmp_path):
    root = str(tmp_path / "state")
    h = Husk(root, tmp_path)
    yield h
    # Tidy what the test left (a failing test may leave a container), then
    # insist that nothing at all is left.
    leftover = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for cid in leftover:
        subprocess.run(h.cmd("delete", "--force", cid), capture_output=True, timeout=60)
    reap()
    assert_no_leaks(root)
    assert not leftover, f"test left containers behind: {leftover}"
    cgroups = [os.path.join(base, cid) for cid in h.ids for base in CGROUP_BASES if os.path.isdir(os.path.join(base, cid))]
    assert not cgroups, f"leaked host cgroups: {cgroups}"


def cgroup_bases():
    """Where husk makes a container's host cgroups when the spec names
    none (lifecycle.cpp, host_cgroups): under this process's own group in
    every hierarchy (husk is our child, so its groups are ours)."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] in ("cgroup", "cgroup2"):
                opts = set(fields[sep + 3].split(",")) if fields[sep + 1] == "cgroup" else {""}
                mounts[frozenset(opts)] = fields[4]
    bases = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            want = set(ctrls.split(",")) if ctrls else {""}
            for opts, mnt in mounts.items():
                if want <= opts:
                    bases.append(mnt + path.rstrip("/"))
                    break
    return bases


CGROUP_BASES = cgroup_bases()


def assert_no_leaks(root):
    deadline = time.time() + 10
    while True:
        procs = processes_mentioning(root)
        with open("/proc/self/mountinfo") as f:
            mounts = [l for l in f if root in l]
        dirs = os.listdir(root) if os.path.isdir(root) else []
        if not procs and not mounts and not dirs:
            return
        if time.time() > deadline:
            break
        time.sleep(0.2)
        reap()
    assert not procs, f"leaked processes: {procs}"
    assert not mounts, f"leaked mounts: {mounts}"
    assert not dirs, f"leaked state: {dirs}"


@pytest.fixture
def bundle(tmp_path, rootfs_template):
    """make(args, **edits) -> bundle dir with a private copy of the rootfs."""
    def make(args, edit=None, name=None):
        b = tmp_path / (name or f"bundle-{uuid.uuid4().hex[:6]}")
        b.mkdir()
        shutil.copytree(rootfs_template, b / "rootfs", symlinks=True)
        c = base_config(args)
        if edit:
            edit(c)
        (b / "config.json").write_text(json.dumps(c, indent=1))
        return str(b)
    return make


@pytest.fixture(scope="session")
def debian():
    """A Debian 12 rootfs (python3, sqlite3, systemd-sysv), built once
    (scripts/debian-rootfs); tests use it read-only, as an overlay's lower layer."""
    p = subprocess.run([os.path.join(ROOT, "scripts", "debian-rootfs")], capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, f"scripts/debian-rootfs failed: {p.stderr}"
    return p.stdout.strip()


def wait_for(pred, what, timeout=60, interval=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def jail_devices(husk, driver):
    """The device nodes a VMM's jail holds when the VM has no NIC (jail.h):
    /dev/kvm too when the VM runs under KVM (the API VMMs always do; QEMU
    when husk's probe chose it) and the host has one (some of ours do, one
    that boots nothing: QEMU then runs TCG)."""
    kvm = driver in DISK_DRIVERS
    if driver == "qemu":
        kvm = json.loads(husk("features", check=True).stdout)["annotations"]["org.husk.accel"] == "kvm"
    return sorted(["null", "urandom", "zero"] + (["kvm"] if kvm and os.path.exists("/dev/kvm") else []))


def jailed_vmm(husk, cid):
    """The VMM process itself. Every driver runs its VMM in a jail whose
    pid 1, the reaper, is what state.json records (and what is killed)."""
    init = husk.state_file(cid)["vmm_pid"]
    with open(f"/proc/{init}/comm") as f:
        assert f.read().strip() == "husk-jail-init"
    with open(f"/proc/{init}/task/{init}/children") as f:
        return int(f.read().split()[0])


def reseal(state):
    """Seal a template's state file as its bytes are now (vm_template.h,
    Seal): a template that passes the store's check, to test what the VMM
    makes of it."""
    seal = str(state)[:-len(".state")] + ".seal"
    st = os.stat(state)
    with open(state, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    with open(seal, "w") as f:
        json.dump({"sha256": digest, "bytes": st.st_size, "ino": 0, "ctime_ns": 0}, f)


def new_id():
    return "t" + uuid.uuid4().hex[:8]


# Networking: a veth pair between a container netns and a peer netns.

def sh(*args, check=True, **kw):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, **kw)


def link(ns, dev):
    return json.loads(sh("ip", "-n", ns, "-j", "link", "show", dev).stdout)[0]


def assert_untouched(ns, dev="eth0"):
    """Nothing of ours is left in the caller's netns: no tap, no qdisc, no filter."""
    names = [l["ifname"] for l in json.loads(sh("ip", "-n", ns, "-j", "link").stdout)]
    assert sorted(names) == sorted(["lo", dev]), names
    assert "ingress" not in sh("tc", "-n", ns, "qdisc", "show", "dev", dev).stdout
    assert sh("tc", "-n", ns, "filter", "show", "dev", dev, "ingress").stdout.strip() == ""


@pytest.fixture
def netpair():
    """A container netns with eth0 (10.N.0.2/24, fd00:N::2/64, MTU 1400,
    default route via .1) whose veth peer sits in a second "peer" netns."""
    tag = uuid.uuid4().hex[:6]
    n = 100 + int(tag[:2], 16) % 100
    ctr, peer = f"husk-c{tag}", f"husk-p{tag}"
    for ns in (ctr, peer):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", f"hc{tag}", "type", "veth", "peer", "name", f"hp{tag}")
        sh("ip", "link", "set", f"hc{tag}", "netns", ctr)
        sh("ip", "link", "set", f"hp{tag}", "netns", peer)
        sh("ip", "-n", ctr, "link", "set", f"hc{tag}", "name", "eth0")
        for ns, dev, host in ((ctr, "eth0", 2), (peer, f"hp{tag}", 1)):
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "1400", "up")
            sh("ip", "-n", ns, "addr", "add", f"10.{n}.0.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"fd00:{n}::{host}/64", "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", "lo", "up") if ns == peer else None
        sh("ip", "-n", ctr, "route", "add", "default", "via", f"10.{n}.0.1")
        sh("ip", "-n", ctr, "route", "add", "192.0.2.0/24", "via", f"10.{n}.0.1", "metric", "7")
        yield {"ctr": ctr, "peer": peer, "addr": f"10.{n}.0.2", "gw": f"10.{n}.0.1", "addr6": f"fd00:{n}::2",
               "path": f"/run/netns/{ctr}"}
    finally:
        for ns in (ctr, peer):
            sh("ip", "netns", "delete", ns, check=False)


def in_netns(path):
    def edit(c):
        for n in c["linux"]["namespaces"]:
            if n["type"] == "network":
                n["path"] = path
    return edit


# The share attacked from the guest (test_isolation.py, test_pod.py).

ATTACKS = ("dotdot", "symlink", "hardlink", "handles", "race")


@pytest.fixture(scope="session")
def share_attack(tmp_path_factory):
    """tests/e2e/helpers/share_attack.c, built static (it runs on busybox)."""
    out = str(tmp_path_factory.mktemp("helpers") / "share-attack")
    src = os.path.join(ROOT, "tests", "e2e", "helpers", "share_attack.c")
    subprocess.run(["gcc", "-static", "-O1", "-Wall", "-Wextra", "-Werror", "-o", out, src], check=True)
    return out


def run_attack(husk, bundle, share_attack, out_path, script, edit, before_start=lambda cid, b: None):
    """A container whose rootfs holds share-attack runs `script` to its
    end; `before_start(cid, bundle_dir)` runs between its create and its
    start. Returns (its id, its bundle, what it printed)."""
    b = bundle(["sh", "-c", script], edit)
    shutil.copy2(share_attack, os.path.join(b, "rootfs", "bin", "share-attack"))
    cid = new_id()
    with open(out_path, "wb") as f:
        husk("create", "-b", b, cid, check=True, stdout=f)
    before_start(cid, b)
    husk("start", cid, check=True)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the attack to end", timeout=180)
    with open(out_path) as f:
        return cid, b, f.read()


def plant_secrets(secret, *dirs):
    """husk-secret files holding `secret` in each of `dirs` (on the host)."""
    for d in dirs:
        with open(os.path.join(d, "husk-secret"), "w") as f:
            f.write(secret)


def assert_no_escape(out, secret, bases):
    """share-attack's report: every technique tried on every base, nothing
    of the secret reached."""
    assert "ESCAPE" not in out and secret not in out, out
    assert out.rstrip().endswith("done"), out
    for base in bases:
        for t in ATTACKS:
            m = re.search(rf"^{t} {re.escape(base)}: (\d+) attempts, (\d+) escapes", out, re.M)
            assert m, (t, base, out)
            assert int(m.group(2)) == 0 and (int(m.group(1)) > 0 or t == "handles"), (t, base, out)
