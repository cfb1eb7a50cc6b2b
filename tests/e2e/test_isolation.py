"""The VMM's jail, from the host's side (issue 9): whatever the driver, the
VMM runs in its own mount and pid namespaces on a root that shows only
what it serves and needs, with no new privileges and only the capabilities
a file server needs. A guest that subverts its VMM (a 9p or hostfs bug, a
device emulation bug) lands there: not in the host's state directory, not
in another container's share, not in the host's /etc."""
import os

from conftest import DISK_DRIVERS, DRIVER, jail_devices, jailed_vmm, new_id, wait_for

# CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_MKNOD
FILE_SERVER_CAPS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 27)
# What a jail may hold: /usr and the merged-/usr links, its device nodes,
# /proc and /tmp of its own, and what it is given (jail.h).
ALLOWED = {"usr", "lib", "lib64", "bin", "sbin", "dev", "proc", "tmp", "kernel", "initrd.img", "vmm",
           "share0", "disk0", "vmm-bin", "vmm.log"}


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
    caps = 0 if DRIVER in DISK_DRIVERS else FILE_SERVER_CAPS
    assert int(st["CapBnd"], 16) == caps and int(st["CapEff"], 16) & ~caps == 0
    if DRIVER == "qemu":
        assert st["Seccomp"] == "2"  # and QEMU's own sandbox on top
    with open(f"/proc/{vmm}/mountinfo") as f:
        mounts = {l.split()[4]: l.split()[5] for l in f}
    assert mounts["/"].startswith("ro") and mounts["/usr"].startswith("ro")
    for c in (a, b):
        husk("delete", "--force", c, check=True)
