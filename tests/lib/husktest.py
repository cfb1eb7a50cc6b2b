"""Helpers shared by the pytest suites (e2e, clients)."""
import os


def _mounts_mention(pid, needle):
    """A jailed VMM (UML) or virtiofsd names no host path: its mounts do."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            return needle in f.read()
    except OSError:
        return False


def processes_mentioning(needle):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if st == "Z":
            continue
        jailed = "husk.vmm=uml" in cmd or "virtiofsd" in cmd or "husk-vsock" in cmd
        if needle in cmd or (jailed and _mounts_mention(pid, needle)):
            found.append((int(pid), cmd))
    return found


def make_user(name):
    """A local user for rootless tests, and its $XDG_RUNTIME_DIR:
    (pwd entry, xdg dir, whether we made the user)."""
    import pwd
    import subprocess
    made = False
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", name], check=True, capture_output=True)
        made = True
    pw = pwd.getpwnam(name)
    xdg = f"/run/user/{pw.pw_uid}"
    os.makedirs(xdg, exist_ok=True)
    os.chown(xdg, pw.pw_uid, pw.pw_gid)
    os.chmod(xdg, 0o700)
    return pw, xdg, made


def remove_user(name, xdg, made):
    """Undo make_user: the user's processes, and the user if we made it."""
    import shutil
    import subprocess
    subprocess.run(["pkill", "-KILL", "-u", name], check=False)
    if made:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)
        shutil.rmtree(xdg, ignore_errors=True)


def header_release(kernel):
    """The release a bzImage's boot header names (the first word of the
    kernel_version string, at its offset + 0x200)."""
    with open(kernel, "rb") as f:
        head = f.read(65 * 512)
    at = int.from_bytes(head[0x20E:0x210], "little") + 0x200
    return head[at:head.index(b"\0", at)].decode().split()[0]


# What podman writes for an image whose command is systemd (its systemd
# mode): the default capabilities, tmpfs on /run, /run/lock, /tmp and
# /var/log/journal, a writable cgroup tree, container=podman.
PODMAN_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_NET_BIND_SERVICE",
               "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"]


def systemd_config(c, rootfs):
    c["root"] = {"path": str(rootfs), "readonly": False}
    c["process"]["env"] = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "container=podman"]
    c["process"]["capabilities"] = {k: PODMAN_CAPS for k in ("bounding", "effective", "permitted")}
    for m in c["mounts"]:
        if m["destination"] == "/sys/fs/cgroup":
            m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    for d in ("/run", "/run/lock", "/tmp", "/var/log/journal"):
        c["mounts"].append({"destination": d, "type": "tmpfs", "source": "tmpfs",
                            "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]})
    c["annotations"] = {"org.husk.kernel": "/vmlinuz"}
