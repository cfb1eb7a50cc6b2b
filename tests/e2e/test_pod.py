"""Pods: containers that join a running container's VM (issue 21).

A member names the sandbox's namespaces by path, as podman pods and
docker's `container:` give them (/proc/<sandbox pid>/ns/<type>), or says so
in CRI annotations; it then runs in the same VM, in the namespaces it
shares, with its own rootfs, mount namespace, cgroup, process and exit.
"""
import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from conftest import assert_no_escape, new_id, reap, run_attack, wait_for


def gone(pid):
    """The process has exited (we are the subreaper: reap it first)."""
    reap()
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] == "Z"
    except FileNotFoundError:
        return True


def ns_paths(pid, types=("ipc", "uts", "network")):
    def edit(c):
        names = {"network": "net"}
        for n in c["linux"]["namespaces"]:
            if n["type"] in types:
                n["path"] = f"/proc/{pid}/ns/{names.get(n['type'], n['type'])}"
        c.pop("hostname", None)  # the pod's UTS namespace has the sandbox's
    return edit


def start_sandbox(husk, bundle, tmp, script, edit=None):
    sid = new_id()
    out = open(tmp / f"{sid}.out", "wb")

    def ed(c):
        c["hostname"] = "podhost"
        if edit:
            edit(c)
    husk("create", "-b", bundle(["sh", "-c", script], edit=ed), sid, check=True, stdout=out)
    husk("start", sid, check=True)
    return sid, husk.state(sid)["pid"], tmp / f"{sid}.out"


def create_member(husk, bundle, tmp, args, edit, start=True):
    mid = new_id()
    out = open(tmp / f"{mid}.out", "wb")
    husk("create", "-b", bundle(args, edit=edit), mid, check=True, stdout=out)
    if start:
        husk("start", mid, check=True)
    return mid, tmp / f"{mid}.out"


def read(path):
    with open(path) as f:
        return f.read()


IDS = ("cat /proc/sys/kernel/random/boot_id; hostname; "
       "for n in ipc uts pid mnt; do readlink /proc/self/ns/$n; done")


def test_member_joins_the_sandbox_vm(husk, bundle, tmp_path):
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, IDS + "; echo ready; exec httpd -f -p 8080 -h /etc")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    mid, mout = create_member(husk, bundle, tmp_path, ["sh", "-c", IDS + "; wget -q -O- http://127.0.0.1:8080/passwd | head -1; exit 7"],
                              ns_paths(spid))
    st = husk.state_file(mid)
    assert st["sandbox"] == sid and st["vmm_pid"] == 0
    wait_for(lambda: husk.state(mid)["status"] == "stopped", "member exits")
    s, m = read(sout).split("\n"), read(mout).split("\n")
    assert s[0] == m[0], "one VM: the same guest boot id"
    assert s[1] == m[1] == "podhost", "the UTS namespace is shared"
    assert s[2] == m[2], "the IPC namespace is shared"
    assert s[3] == m[3], "the UTS namespace is shared"
    assert s[4] != m[4], "each has its own pid namespace"
    assert s[5] != m[5], "each has its own mount namespace"
    assert m[6] == "root:x:0:0:root:/root:/bin/sh", "127.0.0.1 reaches the sandbox's httpd"
    assert husk.state_file(mid)["exit_code"] == 7
    # The member's end is its own: the sandbox runs on.
    assert husk.state(sid)["status"] == "running"
    r = husk("exec", sid, "cat", "/proc/sys/kernel/random/boot_id", check=True)
    assert r.stdout.decode().strip() == s[0]
    husk("delete", mid, check=True)
    assert not os.path.exists(os.path.join(husk.root, mid))
    husk("kill", sid, "KILL", check=True)
    wait_for(lambda: husk.state(sid)["status"] == "stopped", "sandbox stops")
    husk("delete", sid, check=True)


def test_member_keeps_the_runc_contract(husk, bundle, tmp_path):
    """exec, ps, kill, pause of a member: its own, not the sandbox's."""
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    # An orphan (sleep 777) stays in the member's cgroup in the pod's pid
    # namespace: the member's own, for ps, and gone with its delete.
    mid, mout = create_member(husk, bundle, tmp_path, ["sh", "-c", "(sleep 777 &); echo up; exec sleep 999"],
                              ns_paths(spid, ("ipc", "uts", "pid", "network")), start=False)
    assert husk.state(mid)["status"] == "created"
    assert read(mout) == "", "nothing runs before start"
    husk("start", mid, check=True)
    assert husk.state(mid)["status"] == "running"
    wait_for(lambda: "up" in read(mout), "member runs")
    # Its pid namespace is the sandbox's (asked for), its processes its own.
    wait_for(lambda: len(json.loads(husk("ps", mid, "--format", "json", check=True).stdout)) == 2,
             "the member's two processes in its ps")
    assert len(json.loads(husk("ps", sid, "--format", "json", check=True).stdout)) == 1, "the sandbox's ps has its own only"
    r = husk("exec", mid, "sh", "-c", "ps -o args | grep -c '^sleep'", check=True)
    assert r.stdout.strip() == b"3", r.stdout  # the pod's pid namespace: both containers' sleeps
    r = husk("exec", mid, "sh", "-c", "exit 3")
    assert r.returncode == 3
    # Pause freezes the member only.
    husk("pause", mid, check=True)
    assert husk.state(mid)["status"] == "paused"
    assert husk.state(sid)["status"] == "running"
    r = husk("exec", sid, "true")
    assert r.returncode == 0, "the sandbox still answers"
    husk("resume", mid, check=True)
    assert husk.state(mid)["status"] == "running"
    husk("kill", mid, "TERM", check=True)
    wait_for(lambda: husk.state(mid)["status"] == "stopped", "member stops")
    assert husk.state(sid)["status"] == "running"
    assert husk.state_file(mid)["exit_signal"] == signal.SIGTERM
    husk("delete", mid, check=True)
    r = husk("exec", sid, "ps", "-o", "args", check=True)
    assert b"sleep 777" not in r.stdout, "the member's orphan went with it"
    husk("delete", "--force", sid, check=True)


def test_cri_annotations_and_forced_sandbox_delete(husk, bundle, tmp_path):
    """containerd's CRI: container-type/sandbox-id; deleting the sandbox
    kills its members, whose state then reads stopped."""
    def sandbox_ann(c):
        c["annotations"] = {"io.kubernetes.cri.container-type": "sandbox"}
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "cat /proc/sys/kernel/random/boot_id; exec sleep 1000",
                                    edit=sandbox_ann)

    def member_ann(c):
        c["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sid}
        c.pop("hostname", None)
        for n in c["linux"]["namespaces"]:
            if n["type"] == "ipc":
                n["path"] = f"/proc/{spid}/ns/ipc"
    mid, mout = create_member(husk, bundle, tmp_path, ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; exec sleep 999"],
                              member_ann)
    wait_for(lambda: read(mout) and read(sout), "both print")
    assert read(mout) == read(sout)
    relay = husk.state(mid)["pid"]
    husk("delete", "--force", sid, check=True)
    wait_for(lambda: husk.state(mid)["status"] == "stopped", "the member goes with its sandbox")
    wait_for(lambda: gone(relay), "the member's relay exits")
    husk("delete", mid, check=True)


def test_member_errors_leave_nothing(husk, bundle, tmp_path):
    def cri_missing(c):
        c["annotations"] = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "nosuch"}
    mid = new_id()
    r = husk("create", "-b", bundle(["true"], edit=cri_missing), mid)
    assert r.returncode != 0 and b"sandbox nosuch is not a running husk container" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(husk.root, mid))
    # A member whose rootfs is missing: the sandbox is untouched.
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    b = bundle(["true"], edit=ns_paths(spid))
    subprocess.run(["rm", "-rf", os.path.join(b, "rootfs", "bin")], check=True)
    r = husk("create", "-b", b, mid)
    assert r.returncode != 0 and b"exec" in r.stderr or b"no such" in r.stderr.lower(), r.stderr
    assert not os.path.exists(os.path.join(husk.root, mid))
    assert husk.state(sid)["status"] == "running"
    husk("delete", "--force", sid, check=True)


def test_a_sandbox_on_a_disk_takes_no_member(husk, bundle, tmp_path):
    """A VM whose rootfs is a copy on a disk (Firecracker, or asked for)
    cannot be given another container's rootfs: a clear refusal."""
    def disk(c):
        c["annotations"] = {"org.husk.rootfs": "disk"}
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000", edit=disk)
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    mid = new_id()
    r = husk("create", "-b", bundle(["true"], edit=ns_paths(spid)), mid)
    assert r.returncode != 0 and b"has its rootfs on a disk" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(husk.root, mid))
    assert husk.state(sid)["status"] == "running"
    husk("delete", "--force", sid, check=True)


def test_concurrent_members_a_crashed_owner_and_a_late_joiner(husk, bundle, tmp_path):
    """Members created at once are serialised; a sandbox whose shim dies
    leaves its members stopped and deletable; a member that comes after
    the sandbox stopped fails cleanly."""
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    ids = [new_id() for _ in range(3)]
    # (stderr to files: a member's relay keeps its stdio, as runc's init does)
    errs = [open(tmp_path / f"{i}.err", "w+b") for i in ids]
    procs = [subprocess.Popen(husk.cmd("run", "-d", "-b", bundle(["sleep", "1000"], edit=ns_paths(spid)), i),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=e) for i, e in zip(ids, errs)]
    for p, e in zip(procs, errs):
        p.wait(timeout=240)
        assert p.returncode == 0, read(e.name)
    for i in ids:
        assert husk.state(i)["status"] == "running" and husk.state_file(i)["sandbox"] == sid
    relays = [husk.state(i)["pid"] for i in ids]
    # The VM's owner dies: every member reads stopped and goes with delete.
    os.kill(spid, signal.SIGKILL)
    for i, pid in zip(ids, relays):
        wait_for(lambda: husk.state(i)["status"] == "stopped", "member stops with its sandbox")
        wait_for(lambda: gone(pid), "its relay exits")
    for i in ids:
        husk("delete", i, check=True)
    r = husk("create", "-b", bundle(["true"], edit=ns_paths(spid)), "late")
    assert r.returncode != 0 and b"is not a namespace of a running husk container" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(husk.root, "late"))
    husk("delete", sid, check=True)


def mem_total_kib(husk, cid):
    r = husk("exec", cid, "grep", "MemTotal", "/proc/meminfo", check=True)
    return int(r.stdout.split()[1])


no_hotplug = pytest.mark.skipif(os.environ.get("HUSK_HYPERVISOR", "qemu") != "qemu",
                                reason="memory is plugged into a running VM with virtio-mem, which only the QEMU driver has")


@no_hotplug
def test_the_pod_vm_grows_for_its_members_and_update(husk, bundle, tmp_path):
    """rkt's rule, as members arrive: the VM holds the sum of its containers'
    memory (virtio-mem), and gives it back as they go; `update` of a limit
    past the VM's RAM grows the VM too."""
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    before = mem_total_kib(husk, sid)

    def limited(c):
        ns_paths(spid)(c)
        c["linux"]["resources"] = {"memory": {"limit": 512 << 20}}
    mid, _ = create_member(husk, bundle, tmp_path, ["sleep", "1000"], limited)
    wait_for(lambda: mem_total_kib(husk, sid) >= before + 500 * 1024, "the VM to grow by the member's 512 MiB")
    r = husk("exec", mid, "cat", "/sys/fs/cgroup/memory.max", check=True)
    assert int(r.stdout) == 512 << 20
    husk("delete", "--force", mid, check=True)
    wait_for(lambda: mem_total_kib(husk, sid) < before + 100 * 1024, "the VM to give the member's memory back")
    # The sandbox's own limit, raised past what it booted with.
    r = husk("update", "--memory", "700M", sid)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: mem_total_kib(husk, sid) >= 700 * 1024, "the VM to grow for the update")
    husk("delete", "--force", sid, check=True)


def test_member_hooks(husk, bundle, tmp_path):
    """A member's hooks: prestart/createRuntime on the host with its state
    (pid: its relay), createContainer/startContainer in the guest, in its
    own container; poststop at delete."""
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    host_log = tmp_path / "hooks.log"

    def hooks(c):
        ns_paths(spid)(c)
        host = {"path": "/bin/sh", "args": ["sh", "-c", f"cat >> {host_log}; echo >> {host_log}"]}
        guest = {"path": "/bin/sh", "args": ["sh", "-c", "echo $0 >> /hooks", "guest"]}
        c["hooks"] = {"prestart": [host], "createRuntime": [host], "poststop": [host],
                      "createContainer": [guest], "startContainer": [guest]}
    mid, _ = create_member(husk, bundle, tmp_path, ["sleep", "1000"], hooks)
    states = [json.loads(l) for l in read(host_log).split("\n") if l.strip()]
    assert [s["status"] for s in states] == ["creating", "creating"], states
    assert all(s["id"] == mid and s["pid"] == husk.state(mid)["pid"] for s in states)
    r = husk("exec", mid, "cat", "/hooks", check=True)
    assert r.stdout == b"guest\nguest\n", r.stdout
    r = husk("exec", sid, "sh", "-c", "cat /hooks 2>/dev/null || echo none", check=True)
    assert r.stdout == b"none\n", "the sandbox's own rootfs is untouched"
    husk("delete", "--force", mid, check=True)
    states = [json.loads(l) for l in read(host_log).split("\n") if l.strip()]
    assert states[-1]["status"] == "stopped" and len(states) == 3
    husk("delete", "--force", sid, check=True)


def test_the_vm_outlives_the_sandbox_container_for_its_members(husk, bundle, tmp_path):
    """The sandbox's container ends first (a pause process killed, docker's
    `container:` target exiting): its pid exits with its status, its state
    reads stopped, and its members run on in the VM until the last is
    deleted, as a pod's namespaces outlive their holder under runc."""
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    mid, mout = create_member(husk, bundle, tmp_path, ["sh", "-c", "echo up; exec sleep 999"], ns_paths(spid))
    wait_for(lambda: "up" in read(mout), "member runs")
    husk("kill", sid, "KILL", check=True)
    wait_for(lambda: husk.state(sid)["status"] == "stopped", "the sandbox's container stops")
    wait_for(lambda: gone(spid), "its process exits")
    assert husk.state_file(sid)["exit_signal"] == signal.SIGKILL
    assert husk.state(mid)["status"] == "running"
    r = husk("exec", mid, "echo", "still-here", check=True)
    assert r.stdout == b"still-here\n"
    r = husk("create", "-b", bundle(["true"], edit=ns_paths(spid)), "late2")
    assert r.returncode != 0, "no container joins a stopped sandbox"
    cgroups = husk.state_file(sid)["cgroups"]
    assert cgroups and all(os.path.isdir(d) for d in cgroups)
    husk("delete", sid, check=True)  # the VM goes with it, and its members
    # ... and so do its host cgroups, which its heir (the shim's fork that
    # kept the VM for the member) was still in (bench/chaos found them left).
    assert not [d for d in cgroups if os.path.exists(d)]
    wait_for(lambda: husk.state(mid)["status"] == "stopped", "the member stops with the VM")
    husk("delete", mid, check=True)

    # And the other order: the last member's delete ends the VM.
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    mid, mout = create_member(husk, bundle, tmp_path, ["sleep", "999"], ns_paths(spid))
    husk("kill", sid, "KILL", check=True)
    wait_for(lambda: husk.state(sid)["status"] == "stopped", "the sandbox's container stops")
    assert husk.state(mid)["status"] == "running"
    husk("delete", "--force", mid, check=True)
    husk("delete", sid, check=True)



@pytest.mark.not_on(("uml", "firecracker"), reason="no virtio-fs: hostfs / a disk (README)")
def test_a_members_mounts_outlive_its_processes_until_it_is_deleted(husk, bundle, tmp_path):
    """The agent holds each container's mount namespace until the container
    is deleted, and lets go of it then (guest-agent/requests.cpp,
    mount_pin): the exit of a container's last process is never what
    unmounts its virtio-fs submounts. (When it was, Debian's 6.1 guest
    kernel now and then hit BUG(), "Busy inodes after unmount", inside that
    exit: the process never ended, nor `husk run`; test_run.py's signal test
    caught it under load.) Seen from the guest: each rootfs is a superblock
    of its own, with an anonymous device number the kernel hands out
    lowest-free first. While an exited member's rootfs is still mounted,
    the next member gets another number (without the hold it got the same
    one); once the member is deleted, its number is free again (held for
    good, the next member got a third)."""
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")

    def root_dev():
        mid, out = create_member(husk, bundle, tmp_path, ["stat", "-c", "%d", "/"], ns_paths(spid))
        wait_for(lambda: husk.state(mid)["status"] == "stopped", "member exits")
        return mid, int(read(out))
    a, dev_a = root_dev()
    b, dev_b = root_dev()
    assert dev_b != dev_a, "the exited member's rootfs is still mounted in the guest"
    husk("delete", a, check=True)
    time.sleep(3)  # (the agent lets go of a deleted member's mounts 2 s after: kUnpinDelay)
    c, dev_c = root_dev()
    assert dev_c == dev_a, "the deleted member's rootfs is unmounted in the guest"
    for m in (b, c, sid):
        husk("delete", "--force", m, check=True)

# docker's and containerd's default capabilities: no CAP_SYS_ADMIN (no
# mount), no CAP_DAC_READ_SEARCH (no open_by_handle_at), as a pod's
# members get them from podman, docker and Kubernetes.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
                "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
                "CAP_AUDIT_WRITE"]


def test_a_member_sees_nothing_of_another_members(husk, bundle, tmp_path, share_attack):
    """One VM, one share holding every member's rootfs and volumes: each
    member still sees its own only. A member with the default capabilities
    looks for another member's files (by name, through `..`, symlinks,
    hard links, file handles, a rename race, a mount of the share) and
    processes (its pid namespace is its own unless the spec shares one)."""
    secret = "husk-secret-" + uuid.uuid4().hex
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, "echo ready; exec sleep 1000")
    wait_for(lambda: "ready" in read(sout), "sandbox up")
    vol_a, vol_b = tmp_path / "vol-a", tmp_path / "vol-b"
    vol_a.mkdir()
    vol_b.mkdir()

    def member(vol, caps=None):
        def edit(c):
            ns_paths(spid)(c)
            c["mounts"].append({"destination": "/vol", "type": "bind", "source": str(vol), "options": ["rbind", "rw"]})
            if caps:
                c["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}
        return edit
    # A keeps the secret in its rootfs and its volume.
    a, aout = create_member(husk, bundle, tmp_path, ["sh", "-c", f"echo {secret} >/husk-secret; "
                                                                 f"echo {secret} >/vol/husk-secret; echo up; "
                                                                 "exec sleep 1000"], member(vol_a))
    wait_for(lambda: "up" in read(aout), "member A up")
    b_script = ("mkdir -p /mnt/share; mount -t virtiofs husk /mnt/share 2>/dev/null || "
                "mount -t 9p -o trans=virtio husk /mnt/share 2>/dev/null && echo 'mounted the share'; "
                "find / -xdev -name husk-secret 2>/dev/null | sed 's/^/found: /'; "
                "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done | grep '^sleep' | sed 's/^/process: /'; "
                f"share-attack {secret} / /vol")

    b, _, out = run_attack(husk, bundle, share_attack, tmp_path / "b.out", b_script, member(vol_b, DEFAULT_CAPS))
    # Not the share, not A's files, not A's or the sandbox's sleep: B's pid
    # namespace is its own.
    assert "mounted the share" not in out and "found:" not in out and "process:" not in out, out
    assert_no_escape(out, secret, ["/", "/vol"])
    # A is untouched and running; the host holds A's files where A wrote them.
    assert husk.state(a)["status"] == "running"
    assert (vol_a / "husk-secret").read_text() == secret + "\n"
    assert os.listdir(vol_b) == []
    for c in (b, a):
        husk("delete", "--force", c, check=True)
    husk("delete", "--force", sid, check=True)


def test_a_members_stdio_as_the_guests_terminal(husk, bundle, tmp_path):
    """org.husk.stdio=console for a pod's member (and for a plain
    container): its process's stdio is a terminal in the guest, relayed as
    its stdout (stderr goes there too), and its exit status is its own."""
    script = "tty; echo out; echo err >&2"

    def console(c):
        c["annotations"] = {"org.husk.stdio": "console"}
    sid, spid, sout = start_sandbox(husk, bundle, tmp_path, script + "; exec sleep 1000", edit=console)
    wait_for(lambda: b"out" in open(sout, "rb").read(), "the sandbox's output")

    # The member's through husk's --annotation (a runtime entry's
    # arguments): its create request carries it to the pod's shim.
    mid = new_id()
    mout = tmp_path / f"{mid}.out"
    with open(mout, "wb") as o:
        husk("create", "-b", bundle(["sh", "-c", script + "; exit 3"], edit=ns_paths(spid)), mid, check=True, stdout=o,
             glob=("--annotation", "org.husk.stdio=console"))
    husk("start", mid, check=True)
    wait_for(lambda: husk.state(mid)["status"] == "stopped", "the member's exit")
    for path in (sout, mout):
        seen = open(path, "rb").read()
        assert b"/dev/pts/0\r\nout\r\nerr\r\n" in seen, seen
    assert husk.state_file(mid).get("exit_code") == 3, husk.state_file(mid)
    husk("delete", mid, check=True)
    husk("delete", "--force", sid, check=True)
