"""What a runc user trips over in the first minute (issue 24): bundles
exactly as `husk spec` and `runc spec` write them, run under husk and runc
side by side, and the small contract points runc callers rely on."""
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import HUSK, new_id, wait_for
from test_terminal import ConsoleSocket

RUNC = shutil.which("runc")


def spec_bundle(tmp_path, rootfs_template, tool, args, edit=None):
    """A bundle whose config.json is what `tool spec` wrote, with only the
    args changed and the terminal off (no console socket here)."""
    b = tmp_path / f"{os.path.basename(tool)}-{uuid.uuid4().hex[:6]}"
    b.mkdir()
    shutil.copytree(rootfs_template, b / "rootfs", symlinks=True)
    subprocess.run([tool, "spec"], cwd=b, check=True, capture_output=True)
    c = json.loads((b / "config.json").read_text())
    c["process"]["args"] = args
    c["process"]["terminal"] = False
    if edit:
        edit(c)
    (b / "config.json").write_text(json.dumps(c, indent=1))
    return str(b)


def run_under_runc(b, tmp_path):
    cid = "r" + uuid.uuid4().hex[:8]
    root = str(tmp_path / "runc-state")
    try:
        return subprocess.run([RUNC, "--root", root, "run", "-b", b, cid], capture_output=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    finally:
        subprocess.run([RUNC, "--root", root, "delete", "--force", cid], capture_output=True)


# What the workload sees of its own process: every capability set, no_new_privs,
# its ids, hostname, cwd, the limit the spec sets and its umask. (Not the
# limits the spec leaves alone: those are the kernel's defaults, and RLIMIT_NPROC's
# follows the kernel's memory.)
PROBE = ("grep -E '^(Cap|NoNewPrivs)' /proc/self/status; id; hostname; pwd; "
         "grep 'open files' /proc/self/limits; umask")


@pytest.mark.parametrize("tool", ["husk", "runc"])
def test_a_bundle_as_spec_writes_it_runs_as_under_runc(husk, tmp_path, rootfs_template, tool):
    gen = HUSK if tool == "husk" else RUNC
    if gen is None:
        pytest.skip("runc is not installed (scripts/deps installs it)")
    b = spec_bundle(tmp_path, rootfs_template, gen, ["sh", "-c", PROBE])
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    # The default set: AUDIT_WRITE, KILL, NET_BIND_SERVICE; no ambient raise
    # is possible without an inheritable set, so none happens (runc's way).
    assert "CapEff:\t0000000020000420" in out and "CapAmb:\t0000000000000000" in out, out
    if RUNC:
        ref = run_under_runc(b, tmp_path)
        assert ref.returncode == 0, ref.stderr
        assert out == ref.stdout.decode()


def ordered_keys(text):
    pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    return [k for k, _ in pairs]


def test_kill_0_delete_force_of_nothing_and_runc_key_order(husk, tmp_path, rootfs_template):
    b = spec_bundle(tmp_path, rootfs_template, HUSK, ["sleep", "1000"])
    cid = new_id()
    husk("run", "-d", "-b", b, cid, check=True)
    # Signal 0: the existence check, for the init and --all.
    assert husk("kill", cid, "0").returncode == 0
    assert husk("kill", "--all", cid, "0").returncode == 0
    assert husk.state(cid)["status"] == "running"
    # runc's containerState order (no annotations: none given).
    assert ordered_keys(husk("state", cid, check=True).stdout) == [
        "ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"]
    listed = json.loads(husk("list", "--format", "json", check=True).stdout, object_pairs_hook=lambda kv: kv)
    assert [k for k, _ in listed[0]][:4] == ["ociVersion", "id", "pid", "status"]
    husk("delete", "--force", cid, check=True)
    r = husk("kill", cid, "0")
    assert r.returncode != 0 and b"does not exist" in r.stderr
    # delete --force of a container that is not there succeeds (clients'
    # cleanup paths rely on it); plain delete still says so.
    assert husk("delete", "--force", cid).returncode == 0
    r = husk("delete", cid)
    assert r.returncode != 0 and b"does not exist" in r.stderr


def test_exec_as_root_enters_a_cwd_only_the_container_user_may(husk, tmp_path, rootfs_template):

    def edit(c):
        c["process"]["user"] = {"uid": 42, "gid": 42}
        c["process"]["cwd"] = "/root"
    b = spec_bundle(tmp_path, rootfs_template, HUSK, ["sleep", "1000"], edit)
    os.chown(os.path.join(b, "rootfs", "root"), 42, 42)
    os.chmod(os.path.join(b, "rootfs", "root"), 0o700)
    cid = new_id()
    husk("run", "-d", "-b", b, cid, check=True)
    # The default capabilities have no CAP_DAC_OVERRIDE: runc enters the
    # cwd before it drops them, so root gets into uid 42's 0700 directory.
    r = husk("exec", "--user", "0", cid, "sh", "-c", "id -u; pwd")
    assert r.returncode == 0 and r.stdout == b"0\n/root\n", r.stderr
    r = husk("exec", cid, "sh", "-c", "id -u; pwd")
    assert r.returncode == 0 and r.stdout == b"42\n/root\n", r.stderr
    husk("delete", "--force", cid, check=True)


def test_exec_tty_to_a_console_socket_in_the_foreground_and_pty_owner(husk, tmp_path, rootfs_template):
    b = spec_bundle(tmp_path, rootfs_template, HUSK, ["sleep", "1000"])
    cid = new_id()
    husk("run", "-d", "-b", b, cid, check=True)
    # Without -d: the master goes to the socket, husk exec stands in for the
    # process until it exits and exits with its status (runc does the same).
    cs = ConsoleSocket(tmp_path / "c.sock")
    p = subprocess.Popen(husk.cmd("exec", "-t", "--console-socket", cs.path, "--user", "1000:1000", cid,
                                  "sh", "-c", "echo owner=$(stat -c %u $(tty)).; exit 3"),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t = cs.receive()
    # The terminal belongs to the process's user, as runc chowns it.
    t.expect(b"owner=1000.")
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, err
    os.close(t.fd)
    husk("delete", "--force", cid, check=True)


def test_seccomp_conditions_on_one_argument_and_start_hooks_under_the_filter(husk, tmp_path, rootfs_template):

    def edit(c):
        c["root"]["readonly"] = False
        c["linux"]["seccomp"] = {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                # Two conditions on one argument: runc adds one rule per
                # condition, so kill(_, SIGUSR1) and kill(_, SIGUSR2) fail.
                {"names": ["kill"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 12, "op": "SCMP_CMP_EQ"}]},
                {"names": ["process_vm_readv"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_EQ"},
                          {"index": 0, "value": 9001, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99},
            ],
        }
        # runc runs startContainer hooks under the container's filter.
        c["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": [
            "sh", "-c", "mkdir /tmp/hookdir 2>/dev/null; echo $? > /tmp/hook.rc"]}]}
    b = spec_bundle(tmp_path, rootfs_template, HUSK, ["sh", "-c",
                    "kill -USR1 $$ 2>/dev/null || echo usr1-denied; kill -USR2 $$ 2>/dev/null || echo usr2-denied; "
                    "kill -0 $$ && echo kill0-ok; cat /tmp/hook.rc; test -d /tmp/hookdir || echo no-hookdir"], edit)
    assert json.loads(open(os.path.join(b, "config.json")).read())["process"]["noNewPrivileges"] is True
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"usr1-denied\nusr2-denied\nkill0-ok\n1\nno-hookdir\n", (r.stdout, r.stderr)


def test_a_read_only_dev_still_gets_its_nodes_and_mounts(husk, tmp_path, rootfs_template):

    def edit(c):
        for m in c["mounts"]:
            if m["destination"] == "/dev":
                m["options"].append("ro")
    b = spec_bundle(tmp_path, rootfs_template, HUSK, ["sh", "-c",
                    "touch /dev/x 2>/dev/null || echo dev-ro; echo hi > /dev/null && echo null-ok; "
                    "test -c /dev/pts/ptmx && echo pts-ok; touch /dev/shm/y && echo shm-rw; "
                    "grep ' /dev ' /proc/self/mountinfo | grep -c ' ro,nosuid'"], edit)
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"dev-ro\nnull-ok\npts-ok\nshm-rw\n1\n", (r.stdout, r.stderr)


FREEZER = "/sys/fs/cgroup/freezer"


@pytest.mark.skipif(not os.path.exists(f"{FREEZER}/freezer.state") and not os.path.exists(FREEZER),
                    reason="no cgroup v1 freezer hierarchy on this host")
def test_a_frozen_cgroup_is_refused_not_hung(husk, bundle):
    name = "husk-frozen-" + uuid.uuid4().hex[:6]
    d = os.path.join(FREEZER, name)
    os.mkdir(d)
    try:
        with open(os.path.join(d, "freezer.state"), "w") as f:
            f.write("FROZEN")

        def edit(c):
            c["linux"]["cgroupsPath"] = "/" + name
        t0 = time.time()
        r = husk("run", "-b", bundle(["true"], edit=edit), new_id(), timeout=60)
        assert r.returncode != 0 and b"is frozen" in r.stderr, r.stderr
        assert time.time() - t0 < 30
    finally:
        if os.path.isdir(d):
            with open(os.path.join(d, "freezer.state"), "w") as f:
                f.write("THAWED")
            wait_for(lambda: open(os.path.join(d, "freezer.state")).read().strip() == "THAWED", "thaw", timeout=10)
            os.rmdir(d)


def normalize_mounts(text, both_have):
    """mountinfo as "point options fstype", less what a VM makes differ by
    design: the rootfs's and a bind's filesystem (9p), the cgroup tree (always
    v2 in the guest), and the masks and read-only paths of files one of the
    two kernels does not have (each runtime skips those; `both_have` are the
    ones both kernels have)."""
    out = []
    for line in text.splitlines():
        point, opts, fstype = line.split(" ")
        if point.startswith("/sys/fs/cgroup"):
            continue
        if point.startswith(("/proc/", "/sys/")) and point not in both_have:
            continue
        if point == "/" or point.startswith("/data"):
            fstype = "-"
        out.append(f"{point} {opts} {fstype}")
    return out


VARIANTS = {
    "default": lambda c: None,
    "user-cwd-umask": lambda c: (c["root"].update(readonly=False),
                                 c["process"].update(user={"uid": 1000, "gid": 1000, "additionalGids": [10, 44],
                                                           "umask": 0o027}, cwd="/tmp")),
    "caps-without-nnp": lambda c: c["process"].update(noNewPrivileges=False, capabilities={
        s: ["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_KILL"] for s in
        ("bounding", "effective", "permitted", "inheritable", "ambient")}),
    "rlimits-oom": lambda c: c["process"].update(oomScoreAdj=250, rlimits=[
        {"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 8192}, {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 1024}]),
}


@pytest.mark.skipif(RUNC is None, reason="runc is not installed (scripts/deps installs it)")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_spec_variants_look_the_same_under_runc_and_husk(husk, tmp_path, rootfs_template, variant):
    data = tmp_path / "data"
    data.mkdir()

    def edit(c):
        VARIANTS[variant](c)
        # Which of the masked and read-only paths this kernel has.
        c["process"]["env"].append("PROBE_PATHS=" + " ".join(c["linux"]["maskedPaths"] + c["linux"]["readonlyPaths"]))
        # A tmpfs where the image has no directory gets its mode= option; one
        # over a directory the image has takes that directory's mode (runc).
        c["mounts"] += [{"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                         "options": ["nosuid", "nodev", "mode=1770", "size=1m"]},
                        {"destination": "/root", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]},
                        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]}]
    probe = ("grep -E '^(Cap|NoNewPrivs|Seccomp:|Groups)' /proc/self/status; id; umask; pwd; hostname; "
             "grep -E 'open files|core file' /proc/self/limits; "
             + ("grep 'Max processes' /proc/self/limits; " if variant == "rlimits-oom" else "")
             + "cat /proc/self/oom_score_adj; stat -c '%a %U' /scratch /root; echo ---; "
             "for p in $PROBE_PATHS; do [ -e $p ] && echo $p; done; echo ---; "
             "awk '{print $5, $6, $(NF-2)}' /proc/self/mountinfo")
    b = spec_bundle(tmp_path, rootfs_template, RUNC, ["sh", "-c", probe], edit)
    os.chmod(os.path.join(b, "rootfs", "root"), 0o710)
    # Each runtime gets the bundle as it was (a mount point one of them
    # makes would change what the other sees).
    shutil.copytree(b, b + "-runc", symlinks=True)
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    ref = run_under_runc(b + "-runc", tmp_path)
    assert ref.returncode == 0, ref.stderr
    mine, theirs = r.stdout.decode().split("---\n"), ref.stdout.decode().split("---\n")
    assert mine[0] == theirs[0]
    both_have = set(mine[1].split()) & set(theirs[1].split())
    assert normalize_mounts(mine[2], both_have) == normalize_mounts(theirs[2], both_have)
