"""linux.resources in the guest's cgroup v2, `update`, `events`, device
rules, and the shim + VMM placed in the host cgroup of cgroupsPath."""
import json
import os
import subprocess
import time

import pytest

from conftest import DRIVER, jailed_vmm, new_id

MiB = 1 << 20


def resources(res, devices=None, cgroups_path=None):
    def edit(c):
        c["linux"]["resources"] = res
        if devices is not None:
            c["linux"]["devices"] = devices
        if cgroups_path is not None:
            c["linux"]["cgroupsPath"] = cgroups_path
    return edit


def test_resources_are_the_containers_cgroup_limits(husk, bundle):
    cid = new_id()
    script = ("cd /sys/fs/cgroup; echo mem=$(cat memory.max) high=$(cat memory.high) pids=$(cat pids.max) "
              "cpu=\"$(cat cpu.max)\" weight=$(cat cpu.weight); echo cg=$(cat /proc/self/cgroup); "
              # the pids limit holds: 40 sleeps cannot all start
              "for i in $(seq 40); do sleep 30 & done 2>&1 | head -1; kill $(jobs -p) 2>/dev/null; true")
    b = bundle(["sh", "-c", script],
               resources({"memory": {"limit": 64 * MiB}, "pids": {"limit": 20},
                          "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                          "unified": {"memory.high": str(60 * MiB)}}))
    r = husk("run", "-b", b, cid)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert f"mem={64 * MiB} high={60 * MiB} pids=20 cpu=50000 100000 weight=20" in out, out
    assert "cg=0::/" in out, out  # its own cgroup namespace, rooted at its group
    assert "can't fork" in out or "Resource temporarily unavailable" in out, out


def test_update_changes_limits_and_events_report_stats(husk, bundle, tmp_path):
    cid = new_id()
    b = bundle(["sleep", "1000"], resources({"memory": {"limit": 64 * MiB}}))
    husk("run", "-d", "-b", b, cid, check=True)

    r = husk("events", "--stats", cid, check=True)
    ev = json.loads(r.stdout)
    assert ev["type"] == "stats" and ev["id"] == cid
    d = ev["data"]
    assert d["memory"]["usage"]["limit"] == 64 * MiB
    assert 0 < d["memory"]["usage"]["usage"] < 64 * MiB
    assert d["pids"]["current"] >= 1
    assert d["cpu"]["usage"]["total"] > 0

    husk("update", "--memory", "32m", "--pids-limit", "10", "--cpu-quota", "20000", cid, check=True)
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"cpu": {"shares": 2048}, "unified": {"memory.high": str(30 * MiB)}}))
    husk("update", "-r", str(res), cid, check=True)
    r = husk("exec", cid, "sh", "-c", "cd /sys/fs/cgroup; cat memory.max pids.max cpu.max cpu.weight memory.high",
             check=True)
    assert r.stdout.decode().split("\n")[:5] == [str(32 * MiB), "10", "20000 100000", "79", str(30 * MiB)], r.stdout
    ev = json.loads(husk("events", "--stats", cid, check=True).stdout)
    assert ev["data"]["memory"]["usage"]["limit"] == 32 * MiB and ev["data"]["pids"]["limit"] == 10

    # Bad updates fail clearly and change nothing.
    for args, msg in [(["--memory", "lots"], b"--memory: invalid size \"lots\""),
                      (["--memory-swap", "1m"], b"memory.swap: must not be below memory.limit"),
                      (["--cpu-share", "-5"], b"--cpu-share: must not be negative"),
                      (["--blkio-weight", "5"], b"blockIO.weight: must be between 10 and 1000")]:
        r = husk("update", *args, cid)
        assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
    res.write_text('{"memory": {"limit": "big"}}')
    r = husk("update", "-r", str(res), cid)
    assert r.returncode != 0 and b"memory.limit: expected integer, got string" in r.stderr
    r = husk("update", "--cpuset-cpus", "77", cid)  # no host has CPU 77 here
    assert r.returncode != 0 and b"cpu.cpus: \"77\": this host has no CPU 77" in r.stderr, r.stderr
    assert husk("exec", cid, "cat", "/sys/fs/cgroup/memory.max", check=True).stdout.strip() == str(32 * MiB).encode()

    husk("kill", cid, "KILL", check=True)
    deadline = time.time() + 60
    while husk.state(cid)["status"] != "stopped":
        assert time.time() < deadline
        time.sleep(0.2)
    for args in (["update", "--memory", "1g", cid], ["events", "--stats", cid]):
        r = husk(*args)
        assert r.returncode != 0 and b"not running: stopped" in r.stderr, r.stderr
    husk("delete", cid, check=True)


def test_events_report_an_oom_kill(husk, bundle):
    cid = new_id()
    b = bundle(["sleep", "1000"], resources({"memory": {"limit": 32 * MiB}}))
    husk("run", "-d", "-b", b, cid, check=True)
    ev = subprocess.Popen(husk.cmd("events", "--interval", "1s", cid), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # events counts the kills after its first look at the group (its
        # first stats line): an OOM before that is not news to it.
        first = ev.stdout.readline()
        assert json.loads(first)["type"] == "stats", first
        # tmpfs pages are charged to the group and cannot be reclaimed
        # without swap: dd is killed once the group reaches its limit.
        r = husk("exec", cid, "dd", "if=/dev/zero", "of=/dev/shm/fill", "bs=1M", "count=60")
        assert r.returncode == -9, (r.returncode, r.stderr)  # husk exec dies as dd did
        seen = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = ev.stdout.readline()
            if not line:
                break
            e = json.loads(line)
            seen.append(e["type"])
            if e["type"] == "oom":
                assert e["id"] == cid
                break
        assert "oom" in seen, seen
    finally:
        husk("delete", "--force", cid)
        try:
            ev.wait(timeout=30)  # ends with the container
        finally:
            ev.kill()
            ev.wait()
    assert ev.returncode == 0


def test_device_rules_decide_what_the_container_may_open(husk, bundle):
    kmsg = [{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o644}]
    script = ("ls -l /dev/kmsg | cut -c1-10; head -c 3 /dev/kmsg >/dev/null && echo kmsg-read; "
              "echo x > /dev/null && echo null-ok; mknod /dev/k c 1 11 && echo mknod-ok")
    cid = new_id()
    deny = [{"allow": False, "access": "rwm"}]
    b = bundle(["sh", "-c", script], resources({"devices": deny}, devices=kmsg))
    r = husk("run", "-b", b, cid)
    out = r.stdout.decode() + r.stderr.decode()
    assert "crw-r--r--" in out, out
    assert "kmsg-read" not in out and "Operation not permitted" in out, out
    assert "null-ok" in out, out  # runc's default devices stay usable
    assert "mknod-ok" in out, out  # mknod of any char device is allowed, opening it is not

    cid = new_id()
    allow = deny + [{"allow": True, "type": "c", "major": 1, "minor": 11, "access": "r"}]
    b = bundle(["sh", "-c", script], resources({"devices": allow}, devices=kmsg))
    r = husk("run", "-b", b, cid)
    assert "kmsg-read" in r.stdout.decode(), r.stdout + r.stderr


def cgroup_procs(d):
    with open(os.path.join(d, "cgroup.procs")) as f:
        return {int(x) for x in f.read().split()}


def test_shim_and_vmm_run_in_the_host_cgroup_of_cgroups_path(husk, bundle):
    cid = new_id()
    b = bundle(["sleep", "1000"], resources({}, cgroups_path=f"/husk-e2e/{cid}"))
    mem = f"/sys/fs/cgroup/memory/husk-e2e/{cid}"
    unified = f"/sys/fs/cgroup/unified/husk-e2e/{cid}"
    try:
        husk("run", "-d", "-b", b, cid, check=True)
        shim = husk.state(cid)["pid"]
        procs = cgroup_procs(mem)
        assert shim in procs
        assert husk.state_file(cid)["vmm_pid"] in procs and jailed_vmm(husk, cid) in procs
        assert cgroup_procs(unified) == procs
        # Host accounting sees the VM: its guest RAM is charged here.
        with open(os.path.join(mem, "memory.usage_in_bytes")) as f:
            assert int(f.read()) > 20 * MiB
        husk("delete", "--force", cid, check=True)
        assert not os.path.exists(mem) and not os.path.exists(unified)

        # systemd's form, as podman and docker pass it with --systemd-cgroup.
        cid2 = new_id()
        b = bundle(["true"], resources({}, cgroups_path=f"husk.slice:husk:{cid2}"))
        husk("create", "-b", b, cid2, check=True, glob=("--systemd-cgroup",))
        scope = f"/sys/fs/cgroup/memory/husk.slice/husk-{cid2}.scope"
        assert husk.state(cid2)["pid"] in cgroup_procs(scope)
        husk("delete", "--force", cid2, check=True)
        assert not os.path.exists(scope)

        # A bad path fails before anything starts, and leaves nothing.
        cid3 = new_id()
        b = bundle(["true"], resources({}, cgroups_path="/husk-e2e/../escape"))
        r = husk("create", "-b", b, cid3)
        assert r.returncode != 0 and b"must not contain \"..\"" in r.stderr, r.stderr
        r = husk("create", "-b", b, cid3, glob=("--systemd-cgroup",))
        assert r.returncode != 0 and b"must be slice:prefix:name" in r.stderr, r.stderr
    finally:
        for base in [os.path.join("/sys/fs/cgroup", h) for h in os.listdir("/sys/fs/cgroup")]:
            for parent in ("husk-e2e", "husk.slice"):
                try:
                    os.rmdir(os.path.join(base, parent))
                except OSError:
                    pass


def allowed_cpus(pid):
    with open(f"/proc/{pid}/status") as f:
        return [l.split(":")[1].strip() for l in f if l.startswith("Cpus_allowed_list")][0]


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs a host with two CPUs")
def test_a_cpuset_is_the_vms_vcpus_in_the_guest_and_pins_the_vmm_on_the_host(husk, bundle):
    # Half a CPU of quota on CPUs 0-1 of this host (runc runs it): the VM
    # gets a vCPU for each CPU of the set, the guest's group names its own
    # vCPUs, and the VMM runs only on the set's host CPUs.
    # Debian's UML has one CPU and no cpuset controller: the host pins it alone.
    uml = DRIVER == "uml"
    probe = ["sh", "-c", "nproc; cat /sys/fs/cgroup/cpu.max" + ("" if uml else
                                                                 " /sys/fs/cgroup/cpuset.cpus /sys/fs/cgroup/cpuset.mems")]
    for cpus, vcpus, guest in (("0-1", 1 if uml else 2, "0-1"), ("1", 1, "0")):
        cid = new_id()
        husk("run", "-d", "-b", bundle(["sleep", "1000"], resources(
            {"cpu": {"quota": 50000, "period": 100000, "cpus": cpus, "mems": "0"}})), cid, check=True)
        r = husk("exec", cid, *probe)
        assert r.returncode == 0, r.stderr
        want = [str(vcpus), "50000 100000"] + ([] if uml else [guest, "0"])
        assert r.stdout.decode().split("\n")[:len(want)] == want, r.stdout
        assert allowed_cpus(jailed_vmm(husk, cid)) == cpus
        # update: host CPU ids again, translated the same way.
        r = husk("update", "--cpuset-cpus", cpus, cid)
        assert r.returncode == 0, r.stderr
        if not uml:
            assert husk("exec", cid, "cat", "/sys/fs/cgroup/cpuset.cpus").stdout == guest.encode() + b"\n"
        husk("delete", "--force", cid, check=True)


@pytest.mark.skipif(DRIVER != "qemu", reason="vCPU hotplug is QEMU's (q35's ACPI): UML has one CPU, the API VMMs none here")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the host has one CPU: there is no second vCPU to give")
def test_update_plugs_and_unplugs_the_vcpus_the_cpu_limits_ask_for(husk, bundle):
    # No CPU limits: one vCPU. docker update --cpus 2 (a quota of two CPUs)
    # gives the VM a second one, online when update returns, as runc's
    # container would get the host's second CPU.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    probe = ["sh", "-c", "nproc; cat /sys/devices/system/cpu/online"]
    assert husk("exec", cid, *probe).stdout.decode().split() == ["1", "0"]
    husk("update", "--cpu-quota", "200000", "--cpu-period", "100000", cid, check=True)
    assert husk("exec", cid, *probe).stdout.decode().split() == ["2", "0-1"]
    # Both vCPUs work for the container: two busy loops get more than one CPU's time.
    r = husk("exec", cid, "sh", "-c",
             "a=$(cut -d' ' -f1 /proc/uptime); (i=0; while [ $i -lt 40000 ]; do i=$((i+1)); done) & "
             "(i=0; while [ $i -lt 40000 ]; do i=$((i+1)); done) & wait; "
             "grep -E '^(cpu[01]) ' /proc/stat | wc -l", check=True)
    assert r.stdout.decode().split() == ["2"], r.stdout
    # A cpuset of both host CPUs names both vCPUs in the guest's group.
    husk("update", "--cpuset-cpus", "0-1", cid, check=True)
    assert husk("exec", cid, "cat", "/sys/fs/cgroup/cpuset.cpus").stdout == b"0-1\n"
    # Back to half a CPU on one: the vCPU we plugged is taken away again.
    husk("update", "--cpu-quota", "50000", "--cpuset-cpus", "0", cid, check=True)
    deadline = time.time() + 30
    while husk("exec", cid, *probe).stdout.decode().split() != ["1", "0"]:
        assert time.time() < deadline, "the plugged vCPU never went away"
        time.sleep(0.3)
    assert husk("exec", cid, "cat", "/sys/fs/cgroup/cpuset.cpus").stdout == b"0\n"
    husk("delete", "--force", cid, check=True)


def test_without_cgroups_path_the_vm_runs_in_a_group_named_after_the_container(husk, bundle):
    # runc's default: <its own cgroup>/<id> in every hierarchy, gone with delete.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    with open(f"/proc/{husk.state(cid)['pid']}/cgroup") as f:
        lines = {l.split(":")[1]: l.strip().split(":", 2)[2] for l in f}
    with open("/proc/self/cgroup") as f:
        mine = {l.split(":")[1]: l.strip().split(":", 2)[2] for l in f}
    assert lines["memory"] == os.path.join(mine["memory"], cid), lines
    mem = os.path.join("/sys/fs/cgroup/memory", lines["memory"].lstrip("/"))
    assert husk.state_file(cid)["vmm_pid"] in cgroup_procs(mem)
    husk("delete", "--force", cid, check=True)
    assert not os.path.exists(mem)


def read(path):
    with open(path) as f:
        return f.read().strip()


def test_the_host_group_bounds_the_vm_as_the_spec_limits_the_container(husk, bundle):
    # kubelet, cAdvisor and docker stats read the host group: it carries the
    # CPU limits as the spec says them, the cpuset, and a bound for the VM's
    # memory (its RAM + the VMM's own, defaults.h kVmmMemoryMiB).
    cid = new_id()
    cpus = "0-1" if os.cpu_count() >= 2 else "0"
    b = bundle(["sh", "-c", "while :; do :; done"], resources(
        {"cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": cpus}, "memory": {"limit": 64 * MiB}},
        cgroups_path=f"/husk-e2e/{cid}"))
    try:
        husk("run", "-d", "-b", b, cid, check=True)
        cpu, acct = f"/sys/fs/cgroup/cpu/husk-e2e/{cid}", f"/sys/fs/cgroup/cpuacct/husk-e2e/{cid}"
        assert (read(f"{cpu}/cpu.cfs_quota_us"), read(f"{cpu}/cpu.cfs_period_us"), read(f"{cpu}/cpu.shares")) == \
            ("50000", "100000", "512")
        assert read(f"/sys/fs/cgroup/cpuset/husk-e2e/{cid}/cpuset.cpus") == cpus
        assert int(read(f"/sys/fs/cgroup/memory/husk-e2e/{cid}/memory.limit_in_bytes")) == (64 + 64 + 256) * MiB
        # A busy loop in the guest keeps the whole VM near half a host CPU.
        t0, u0 = time.time(), int(read(f"{acct}/cpuacct.usage"))
        time.sleep(4)
        used = (int(read(f"{acct}/cpuacct.usage")) - u0) / 1e9 / (time.time() - t0)
        assert used < 0.75, f"the VM used {used:.2f} CPUs with a quota of 0.5"
        husk("update", "--cpu-quota", "25000", cid, check=True)
        assert read(f"{cpu}/cpu.cfs_quota_us") == "25000"
        husk("delete", "--force", cid, check=True)
    finally:
        for base in [os.path.join("/sys/fs/cgroup", h) for h in os.listdir("/sys/fs/cgroup")]:
            try:
                os.rmdir(os.path.join(base, "husk-e2e"))
            except OSError:
                pass
