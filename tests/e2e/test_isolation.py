"""The VMM's jail, from the host's side (issue 9): whatever the driver, the
VMM runs in its own mount and pid namespaces on a root that shows only
what it serves and needs, with no new privileges and only the capabilities
a file server needs. A guest that subverts its VMM (a 9p or hostfs bug, a
device emulation bug) lands there: not in the host's state directory, not
in another container's share, not in the host's /etc.

virtiofsd (issue 22) is part of the same boundary: a guest talks FUSE to
it. It runs in a jail of its own, then in its own mount, pid and net
namespaces pivot-rooted into the share, with its own seccomp filter, no
new privileges, an empty bounding set and only a file server's
capabilities; and it goes with its VM."""
import os
import signal
import uuid

import pytest

from conftest import (DISK_DRIVERS, DRIVER, KVM_SHAPE, assert_no_escape, jail_devices, jailed_vmm, new_id, plant_secrets,
                      run_attack, wait_for)

# CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD
FILE_SERVER_CAPS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 27)
# What a jail may hold: /usr and the merged-/usr links, its device nodes,
# /proc and /tmp of its own, and what it is given (jail.h).
ALLOWED = {"usr", "lib", "lib64", "bin", "sbin", "dev", "proc", "tmp", "kernel", "initrd.img", "vmm",
           "share0", "disk0", "vmm-bin", "vmm.log"}
# The drivers whose share is virtiofsd's to serve (QEMU's default here).
VIRTIOFS_DRIVERS = ("qemu", "cloud-hypervisor")
# CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID, CAP_SETGID, CAP_SETUID, CAP_MKNOD, CAP_SETFCAP
VIRTIOFSD_CAPS = (1 << 0) | (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 27) | (1 << 31)


def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return {l.split(":")[0]: l.split(":", 1)[1].strip() for l in f if ":" in l}


def test_the_vmm_sees_only_what_it_serves(husk, bundle):
    a, b = new_id(), new_id()
    bundle_b = bundle(["sleep", "1000"])
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), a, check=True)
    husk("run", "-d", "-b", bundle_b, b, check=True)
    vmm = jailed_vmm(husk, a)
    root = f"/proc/{vmm}/root"
    seen = set(os.listdir(root))
    assert {"usr", "dev", "proc", "kernel", "vmm"} <= seen and seen <= ALLOWED, seen
    # Neither the state root (its own container's state, the other
    # container's share) nor the other bundle nor the host's config.
    for host_path in (husk.root, os.path.join(husk.root, b), bundle_b, "/etc", "/home", "/root", "/run", "/var"):
        assert not os.path.exists(root + host_path), host_path
    assert sorted(os.listdir(root + "/dev")) == jail_devices(husk, DRIVER)
    # What it serves is this container's rootfs and nothing beside it.
    if DRIVER in DISK_DRIVERS:
        assert "disk0" in seen and "share0" not in seen
    elif DRIVER in VIRTIOFS_DRIVERS:
        assert "disk0" not in seen and "share0" not in seen  # virtiofsd serves it, not the VMM
    else:
        assert "disk0" not in seen
        wait_for(lambda: "bin" in os.listdir(root + "/share0/rootfs"), "the share to hold the rootfs")
    # Its sockets are the state dir's vmm/: the same files on both sides.
    host_vmm = os.path.join(husk.root, a, "vmm")
    assert os.stat(root + "/vmm").st_ino == os.stat(host_vmm).st_ino
    # Jailed and unprivileged: its own namespaces, /usr and / read-only, no
    # new privileges, the file-server capabilities when it serves a share.
    assert os.readlink(f"/proc/{vmm}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert os.readlink(f"/proc/{vmm}/ns/pid") != os.readlink("/proc/self/ns/pid")
    st = status(vmm)
    assert st["NSpid"].split()[-1] == "2"  # pid 1 is the jail's reaper
    assert st["NoNewPrivs"] == "1"
    caps = 0 if DRIVER in DISK_DRIVERS + VIRTIOFS_DRIVERS else FILE_SERVER_CAPS
    assert int(st["CapBnd"], 16) == caps and int(st["CapEff"], 16) & ~caps == 0
    if DRIVER == "qemu":
        assert st["Seccomp"] == "2"  # and QEMU's own sandbox on top
    with open(f"/proc/{vmm}/mountinfo") as f:
        mounts = {l.split()[4]: l.split()[5] for l in f}
    assert mounts["/"].startswith("ro") and mounts["/usr"].startswith("ro")
    for c in (a, b):
        husk("delete", "--force", c, check=True)


def virtiofsd(husk, cid):
    """The container's serving virtiofsd: the one in its own namespaces,
    rooted in the container's share (its jail's parent watches it)."""
    share = os.path.join(husk.root, cid, "shared")
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "virtiofsd":
                    continue
            with open(f"/proc/{pid}/mountinfo") as f:
                root = next(l.split() for l in f if l.split()[4] == "/")
            serving = root[3] == share and status(pid)["Seccomp"] == "2"
        except (OSError, StopIteration):
            continue  # (gone meanwhile)
        if serving:
            found.append(int(pid))
    return found


@pytest.mark.not_on(("uml", "firecracker"), reason="no virtio-fs: hostfs / a disk (README)")
def test_virtiofsd_sees_only_the_share_and_goes_with_its_vm(husk, bundle):
    a, b = new_id(), new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), a, check=True)
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), b, check=True)
    daemons = virtiofsd(husk, a)
    assert len(daemons) == 1, daemons
    d = daemons[0]
    # Its root is this container's share: the rootfs, nothing of the state
    # dir, the other container or the host.
    root = f"/proc/{d}/root"
    assert sorted(os.listdir(root)) == sorted(os.listdir(os.path.join(husk.root, a, "shared")))
    assert "bin" in os.listdir(root + "/rootfs")
    for host_path in (husk.root, os.path.join(husk.root, b), "/etc", "/usr", "/proc", "/home", "/run"):
        assert not os.path.exists(root + host_path), host_path
    for ns in ("mnt", "pid", "net"):
        assert os.readlink(f"/proc/{d}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns
    st = status(d)
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
    assert int(st["CapBnd"], 16) == 0
    assert int(st["CapEff"], 16) & ~VIRTIOFSD_CAPS == 0 and int(st["CapPrm"], 16) & ~VIRTIOFSD_CAPS == 0
    # It goes with its VM: the VMM killed, the daemon ends (its socket
    # closes); the shim killed, every process of the sandbox ends.
    os.kill(jailed_vmm(husk, a), signal.SIGKILL)
    wait_for(lambda: not virtiofsd(husk, a), "virtiofsd to follow its VMM", timeout=30)
    d_b = virtiofsd(husk, b)
    assert len(d_b) == 1
    os.kill(husk.state(b)["pid"], signal.SIGKILL)
    wait_for(lambda: not virtiofsd(husk, b) and not os.path.exists(f"/proc/{d_b[0]}"), "virtiofsd to follow its shim",
             timeout=30)
    for c in (a, b):
        husk("delete", "--force", c, check=True)


# ---------------------------------------------------------------- the share, attacked from the guest

SHARES = (["9p"] if KVM_SHAPE else ["virtiofs", "9p"]) if DRIVER == "qemu" else ["default"]


@pytest.mark.not_on(DISK_DRIVERS, reason="no shared filesystem: the rootfs is a copy on a disk (README)")
@pytest.mark.parametrize("share", SHARES)
def test_root_in_the_guest_cannot_leave_the_share(husk, bundle, tmp_path, share_attack, share):
    """A root process with every capability and no seccomp profile mounts
    the share anew where it can, and tries to reach the host's files
    beside it: `..`, absolute and relative symlinks, hard links, forged
    file handles, a directory swapped for a symlink while it is walked.
    On 9p and virtio-fs, QEMU's server and virtiofsd resolve every name in
    the share without following the guest's links; UML's hostfs can mount
    any path of the UML process, whose jail (above) holds none of the
    host's."""
    secret = "husk-secret-" + uuid.uuid4().hex
    parent = tmp_path / "vols"
    vol = parent / "vol"
    vol.mkdir(parents=True)
    mount = {"virtiofs": "mount -t virtiofs husk /mnt/share",
             "9p": "mount -t 9p -o trans=virtio,version=9p2000.L husk /mnt/share",
             "default": "mount -t hostfs none /mnt/share -o /"}[share]
    script = (f"mkdir -p /mnt/share; if {mount} 2>/tmp/mount.err; then echo 'share: mounted'; S=/mnt/share; "
              f"else echo \"share: not mounted: $(cat /tmp/mount.err)\"; S=; fi; "
              f"share-attack {secret} / /vol $S")

    def edit(c):
        c["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol), "options": ["rbind", "rw"]})
        c["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]})
        if share != "default":
            c.setdefault("annotations", {})["org.husk.share"] = share
    before = {}

    def plant(cid, b):
        plant_secrets(secret, b, parent, tmp_path, os.path.join(husk.root, cid))
        before.update({d: sorted(os.listdir(d)) for d in (b, parent, tmp_path)})
    cid, b, out = run_attack(husk, bundle, share_attack, tmp_path / "out", script, edit, plant)
    bases = ["/", "/vol"]
    if share == "virtiofs" or share == "default":
        # virtio-fs takes a second mount of its tag, hostfs of any path; a
        # 9p channel serves one mount only.
        assert "share: mounted" in out, out
        bases.append("/mnt/share")
    else:
        assert "share: not mounted" in out, out
    assert_no_escape(out, secret, bases)
    assert husk.state_file(cid)["exit_code"] == 0, out
    # Nothing of the host changed beside the share.
    for d, names in before.items():
        assert sorted(os.listdir(d)) == names, d
    for d in (b, parent, tmp_path):
        with open(os.path.join(d, "husk-secret")) as f:
            assert f.read() == secret
    husk("delete", cid, check=True)
