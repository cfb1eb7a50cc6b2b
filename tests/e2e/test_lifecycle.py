"""The runc lifecycle, step by step: create, state, list, start, kill, delete."""
import pytest
import json
import re
import os
import signal
import subprocess
import time

from conftest import DRIVER, KVM_SHAPE, new_id


def wait_status(husk, cid, want, timeout=30):
    deadline = time.time() + timeout
    while True:
        s = husk.state(cid)
        if s["status"] == want:
            return s
        assert time.time() < deadline, f"{cid} stuck in {s['status']}, wanted {want}"
        time.sleep(0.1)


def test_create_start_state_kill_delete(husk, bundle, tmp_path):
    cid = new_id()
    b = bundle(["sh", "-c", "trap 'echo usr1' USR1; trap 'echo bye; exit 9' TERM; echo started; "
                            "while true; do sleep 0.1; done"],
               edit=lambda c: c.update(annotations={"org.example/k": "v"}))
    out = open(tmp_path / "out", "wb+")
    pidfile = tmp_path / "pid"
    r = husk("create", "-b", b, "--pid-file", str(pidfile), cid, stdout=out)
    assert r.returncode == 0, r.stderr
    pid = int(pidfile.read_text())
    s = husk.state(cid)
    assert s["status"] == "created"
    assert s["pid"] == pid
    assert s["id"] == cid and s["bundle"] == b and s["ociVersion"].startswith("1.")
    assert s["annotations"] == {"org.example/k": "v"}
    # The pid is a real process: the shim.
    assert "husk-shim" in open(f"/proc/{pid}/cmdline").read()

    # Nothing runs before start.
    time.sleep(0.5)
    out.seek(0)
    assert out.read() == b""

    husk("start", cid, check=True)
    assert husk.state(cid)["status"] == "running"
    r = husk("start", cid)
    assert r.returncode != 0 and b"already running" in r.stderr

    listed = husk("list", "--format", "json", check=True)
    assert [(c["id"], c["status"], c["pid"]) for c in json.loads(listed.stdout)] == [(cid, "running", pid)]
    assert husk("list", "-q", check=True).stdout.decode().split() == [cid]
    table = husk("list", check=True).stdout.decode().splitlines()
    assert table[0].split()[:3] == ["ID", "PID", "STATUS"] and table[1].split()[:3] == [cid, str(pid), "running"]

    deadline = time.time() + 30
    while b"started" not in open(tmp_path / "out", "rb").read():
        assert time.time() < deadline
        time.sleep(0.1)
    # Signals by name, SIG-name and number; one at a time, since pending
    # signals of one kind coalesce.
    for n, sig in enumerate(("USR1", "SIGUSR1", str(int(signal.SIGUSR1))), start=1):
        husk("kill", cid, sig, check=True)
        deadline = time.time() + 30
        while open(tmp_path / "out", "rb").read().count(b"usr1") < n:
            assert time.time() < deadline, f"signal {sig} not delivered"
            time.sleep(0.1)

    r = husk("delete", cid)
    assert r.returncode != 0 and b"not stopped" in r.stderr

    husk("kill", cid, check=True)  # default SIGTERM
    wait_status(husk, cid, "stopped")
    assert husk.state(cid)["pid"] == 0
    r = husk("kill", cid, "KILL")
    assert r.returncode != 0 and b"not running" in r.stderr
    r = husk("start", cid)
    assert r.returncode != 0 and b"stopped" in r.stderr
    assert b"bye" in open(tmp_path / "out", "rb").read()
    husk("delete", cid, check=True)
    r = husk("state", cid)
    assert r.returncode == 1 and b"does not exist" in r.stderr


def test_shim_exits_with_the_container_status(husk, bundle):
    cid = new_id()
    b = bundle(["sh", "-c", "exit 42"])
    # create without waiting for the shim: it is our child by reparenting.
    r = husk("create", "-b", b, "--pid-file", os.path.join(husk.tmp, "pid"), cid, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    pid = int(open(os.path.join(husk.tmp, "pid")).read())
    husk("start", cid, check=True)
    _, st = os.waitpid(pid, 0)
    assert os.WIFEXITED(st) and os.WEXITSTATUS(st) == 42
    assert husk.state(cid)["status"] == "stopped"
    husk("delete", cid, check=True)


def test_shim_dies_of_the_containers_signal(husk, bundle):
    cid = new_id()
    b = bundle(["sleep", "1000"])
    husk("create", "-b", b, "--pid-file", os.path.join(husk.tmp, "pid"), cid, stdin=subprocess.DEVNULL, check=True)
    pid = int(open(os.path.join(husk.tmp, "pid")).read())
    husk("start", cid, check=True)
    husk("kill", cid, "9", check=True)
    _, st = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
    husk("delete", cid, check=True)


def test_delete_a_created_container_kills_its_vm(husk, bundle):
    cid = new_id()
    husk("create", "-b", bundle(["sleep", "1000"]), cid, stdin=subprocess.DEVNULL, check=True)
    assert husk.state(cid)["status"] == "created"
    husk("delete", cid, check=True)  # the leak check asserts the VM is gone


def test_delete_force_running(husk, bundle):
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, stdin=subprocess.DEVNULL, check=True)
    husk("delete", "--force", cid, check=True)


def test_run_keep_leaves_a_stopped_container(husk, bundle):
    cid = new_id()
    r = husk("run", "--keep", "-b", bundle(["sh", "-c", "exit 5"]), cid)
    assert r.returncode == 5
    assert husk.state(cid)["status"] == "stopped"
    husk("delete", cid, check=True)


def test_spec_writes_runcs_default(husk, tmp_path):
    d = tmp_path / "specdir"
    d.mkdir()
    husk("spec", "-b", str(d), check=True)
    c = json.loads((d / "config.json").read_text())
    assert c["process"]["args"] == ["sh"] and c["root"] == {"path": "rootfs", "readonly": True}
    assert {m["destination"] for m in c["mounts"]} >= {"/proc", "/dev", "/dev/pts", "/dev/shm", "/sys"}
    r = husk("spec", "-b", str(d))
    assert r.returncode != 0 and b"exists" in r.stderr


def test_version(husk):
    r = husk("--version", check=True)
    assert r.stdout.decode().startswith("husk version ")
    assert "spec: 1." in r.stdout.decode()


def test_features_reports_acceleration(husk):
    j = json.loads(husk("features", check=True).stdout)
    ann = j["annotations"]
    assert j["ociVersionMax"].startswith("1.")
    # Truthful about what landed: host hooks, seccomp, the capability names.
    assert j["hooks"] == ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]
    assert {"rro", "tmpcopyup", "rbind", "ro"} <= set(j["mountOptions"])
    # QEMU shares over virtio-fs (virtiofsd is installed here), UML over hostfs.
    want = {"firecracker": "disk", "cloud-hypervisor": "virtiofs", "uml": "hostfs"}.get(DRIVER, "virtiofs")
    if KVM_SHAPE:
        want = "9p"  # virtio-fs over virtio-mmio hangs (hypervisors/qemu/qemu.cpp)
    if DRIVER == "cloud-hypervisor" and os.geteuid() != 0:
        want = "disk"
    assert ann["org.husk.share"] == want, ann["org.husk.share.reason"]
    assert j["linux"]["seccomp"]["enabled"] and "SCMP_CMP_MASKED_EQ" in j["linux"]["seccomp"]["operators"]
    assert {"CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_CHOWN"} <= set(j["linux"]["capabilities"])
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert (ann["org.husk.accel"], ann["org.husk.accel.reason"]) == ("tcg", "no usable /dev/kvm")
    else:
        # A /dev/kvm that opens is probed with a real guest boot once per
        # host boot; the verdict is cached and is what husk reports.
        with open("/run/husk-accel.json") as f:
            probe = json.load(f)
        with open("/proc/sys/kernel/random/boot_id") as f:
            assert probe["boot_id"] == f.read().strip()
        assert (ann["org.husk.accel"], ann["org.husk.accel.reason"]) == (probe["accel"], probe["why"])
        assert probe["why"]
    # The override wins without probing.
    env = dict(os.environ, HUSK_ACCEL="tcg")
    j = json.loads(husk("features", check=True, env=env).stdout)
    assert (j["annotations"]["org.husk.accel"], j["annotations"]["org.husk.accel.reason"]) == ("tcg", "HUSK_ACCEL=tcg")


def test_check_says_what_this_host_can_run_and_how_to_fix_the_rest(husk):
    j = json.loads(husk("check", "--format", "json", check=True).stdout)
    checks = {c["name"]: c for c in j["checks"]}
    assert j["ok"] and j["hypervisor"] == DRIVER
    # The same verdicts as features, with a fix for every missing piece.
    ann = json.loads(husk("features", check=True).stdout)["annotations"]
    for d in ("qemu", "uml", "firecracker", "cloud-hypervisor"):
        assert checks[f"driver {d}"]["ok"] == (ann[f"org.husk.hypervisor.{d}"] == "available")
    assert checks["acceleration"]["detail"].startswith(ann["org.husk.accel"] + ": ")
    # The channel: vsock where the kernel or husk-vsock serves the device
    # (here, with no /dev/vhost-vsock, husk-vsock), the same words as features'.
    assert checks["vsock"]["detail"] == ann["org.husk.channel"] + ": " + ann["org.husk.channel.reason"]
    assert checks["vsock"]["ok"] == (ann["org.husk.channel"] != "virtio-serial")
    if DRIVER == "qemu" and not os.path.exists("/dev/vhost-vsock"):
        # (scripts/test's virtio-serial phase runs with HUSK_VSOCK=none.)
        assert ann["org.husk.channel"] == ("virtio-serial" if os.environ.get("HUSK_VSOCK") == "none"
                                           else "vsock (husk-vsock)"), ann
    assert all(c["fix"] for c in j["checks"] if not c["ok"] and c["name"] != "host cgroups")
    # A missing guest image fails it, saying what to do.
    r = husk("check", env=dict(os.environ, HUSK_KERNEL="/nonexistent/vmlinux", HUSK_INITRD="/nonexistent/initrd"))
    assert r.returncode == 1 and b"FAIL" in r.stdout and b"cannot run containers here" in r.stdout, r.stdout
    if DRIVER != "uml":
        assert b"guest kernel" in r.stdout and b"/nonexistent/vmlinux" in r.stdout


def test_list_empty(husk):
    assert husk("list", "--format", "json", check=True).stdout.strip() == b"[]"
    assert husk("list", "-q", check=True).stdout == b""


@pytest.mark.not_on("uml", reason="the test reads QEMU's serial console text")
def cold_boot(c):
    c.setdefault("annotations", {})["org.husk.template"] = "off"


def test_debug_shows_the_guest_console(husk, bundle):
    # A VM that boots (no template): the whole boot is on the console.
    r = husk("run", "-b", bundle(["true"], cold_boot), new_id(), glob=("--debug",))
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode(errors="replace")
    assert "Linux version 6.1" in err        # the guest kernel's banner
    assert "husk-agent: started" in err      # the agent's own trace
    assert "template: none (annotation org.husk.template=off)" in err
    # husk's own steps, as runc's --debug prints them (logrus text).
    assert re.search(r'^time="[^"]+" level=debug msg="create t\w+: bundle ', err, re.M), err[-2000:]
    assert re.search(r'^time="[^"]+" level=debug msg="start t\w+"$', err, re.M), err[-2000:]
    if DRIVER == "qemu":
        assert "vm: tcg" in err or "vm: kvm" in err
    else:
        assert f"vm: {DRIVER}," in err
    if KVM_SHAPE:
        # microvm: no SMBIOS (q35 has one), and under TCG the TSC's rate
        # on the command line.
        assert "DMI not present or invalid" in err and "tsc_early_khz=" in err, err[-3000:]
    elif DRIVER == "qemu" and os.environ.get("HUSK_TEMPLATES", "on") not in ("0", "off", "false"):
        # From a template (made by the first container of its shape, this
        # one or an earlier one): the guest's console begins at its attach.
        r = husk("run", "-b", bundle(["true"]), new_id(), glob=("--debug",))
        assert r.returncode == 0, r.stderr
        err = r.stderr.decode(errors="replace")
        assert "husk-agent: attached to its container's host (virtiofs)" in err, err[-3000:]
        assert re.search(r'msg="template: (restoring|none of this shape yet)', err), err[-3000:]


def test_log_file_gets_debug_lines_not_stderr(husk, bundle, tmp_path):
    log = tmp_path / "husk.log"
    r = husk("run", "-b", bundle(["sh", "-c", "echo out; echo err >&2"], cold_boot), new_id(),
             glob=("--debug", "--log", str(log)))
    assert r.returncode == 0
    # With --log, the container's stderr is the container's alone.
    assert r.stdout == b"out\n" and r.stderr == b"err\n"
    assert "husk-agent: started" in log.read_text()
