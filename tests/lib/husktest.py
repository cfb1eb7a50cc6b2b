"""Helpers shared by the pytest suites (e2e, clients)."""
import os


def _mounts_mention(pid, needle):
    """A jailed VMM (UML) names no host path: its mounts do."""
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
        if needle in cmd or ("husk.vmm=uml" in cmd and _mounts_mention(pid, needle)):
            found.append((int(pid), cmd))
    return found
