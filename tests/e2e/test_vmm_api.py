"""The REST-API drivers (Firecracker, Cloud Hypervisor) against the stand-in
VMM (tests/lib/standin_vmm.py): it holds each request to the published API
definition and runs the guest under QEMU TCG, so here, with no KVM and
neither binary, the drivers' calls, the hybrid vsock channel and the rootfs
(Firecracker's disk, Cloud Hypervisor's virtio-fs from a real virtiofsd)
run end to end. Where the real binary and /dev/kvm exist, scripts/test
runs the suite on them too."""
import json
import os
import re
import socket
import subprocess

import pytest

from conftest import DRIVER, ROOT, assert_untouched, in_netns, jail_devices, jailed_vmm, link, new_id, reseal, sh, wait_for

# It runs both API drivers itself: once, in the default pass.
pytestmark = pytest.mark.skipif(DRIVER != "qemu", reason="picks its drivers itself; runs in the default pass")

STANDIN = os.path.join(ROOT, "tests", "lib", "standin_vmm.py")
ENV_BINARY = {"firecracker": "HUSK_FIRECRACKER", "cloud-hypervisor": "HUSK_CLOUD_HYPERVISOR"}


@pytest.fixture
def standin(tmp_path):
    """env(flavour) -> the environment that points husk at the stand-in."""
    d = tmp_path / "standin"
    d.mkdir()
    record = tmp_path / "calls.jsonl"

    def env(flavour, **extra):
        link = d / flavour
        if not link.exists():
            link.symlink_to(STANDIN)
        # Booting, unless a test asks for templates (these check the boot's calls).
        e = dict(os.environ, HUSK_TEST_VMM_STANDIN="1", HUSK_STANDIN_RECORD=str(record), HUSK_TEMPLATES="0")
        e[ENV_BINARY[flavour]] = str(link)
        e.update(extra)
        return e

    env.calls = lambda: [json.loads(l) for l in record.read_text().splitlines()] if record.exists() else []
    env.forget = lambda: record.unlink(missing_ok=True)
    return env


def on(flavour):
    return lambda c: c.setdefault("annotations", {}).update({"org.husk.hypervisor": flavour})


def api(sock, method, path, body=None):
    """One raw HTTP request to a stand-in: (status, body text)."""
    data = b"" if body is None else json.dumps(body).encode()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    length = 0
    while True:
        h = f.readline().decode()
        if h in ("\r\n", ""):
            break
        if h.lower().startswith("content-length:"):
            length = int(h.split(":")[1])
    text = f.read(length).decode() if length else ""
    s.close()
    return status, text


@pytest.fixture
def raw_standin(tmp_path):
    """start(flavour) -> the API socket of a stand-in run by hand."""
    procs = []

    def start(flavour):
        sock = str(tmp_path / f"{flavour}.sock")
        p = subprocess.Popen(["/usr/bin/python3", STANDIN, flavour,
                              "--api-sock" if flavour == "firecracker" else "--api-socket",
                              sock if flavour == "firecracker" else f"path={sock}"])
        procs.append(p)
        wait_for(lambda: os.path.exists(sock), "the stand-in's API socket", timeout=10, interval=0.05)
        return sock

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_the_standin_holds_firecracker_requests_to_the_definition(raw_standin, tmp_path):
    sock = raw_standin("firecracker")
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    assert api(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})[0] == 204
    status, text = api(sock, "PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 2})
    assert status == 400 and "Additional properties are not allowed ('vcpus'" in json.loads(text)["fault_message"]
    status, text = api(sock, "PUT", "/machine-config", {"mem_size_mib": 128})
    assert status == 400 and "'vcpu_count' is a required property" in text
    status, text = api(sock, "PUT", "/machine-config", {"vcpu_count": 64, "mem_size_mib": 128})
    assert status == 400 and "64 is greater than the maximum of 32" in text
    status, text = api(sock, "PUT", "/boot-source", {"kernel_image_path": 7})
    assert status == 400 and "7 is not of type 'string'" in text
    status, text = api(sock, "PUT", "/drives/a", {"drive_id": "b", "is_root_device": False, "path_on_host": str(kernel)})
    assert status == 400 and "does not match" in text
    assert api(sock, "PATCH", "/vm", {"state": "Paused"})[0] == 400  # not started
    assert api(sock, "PUT", "/actions", {"action_type": "InstanceStart"})[0] == 400  # no kernel yet
    assert api(sock, "PUT", "/nonsense", {})[0] == 400
    assert api(sock, "PUT", "/actions", {"action_type": "Reboot"})[0] == 400


def test_the_standin_holds_cloud_hypervisor_requests_to_the_definition(raw_standin, tmp_path):
    sock = raw_standin("cloud-hypervisor")
    kernel = tmp_path / "k"
    kernel.write_bytes(b"x")
    assert api(sock, "PUT", "/api/v1/vm.boot")[0] == 404  # not created
    status, text = api(sock, "PUT", "/api/v1/vm.create", {"payload": {"kernel": str(kernel)}, "cpus": {"boot_vcpus": 1}})
    assert status == 400 and "'max_vcpus' is a required property" in text
    status, text = api(sock, "PUT", "/api/v1/vm.create", {"payload": {"kernel": str(kernel)}, "serial": {"mode": "Stdout"}})
    assert status == 400 and "'Stdout' is not one of" in text
    status, text = api(sock, "PUT", "/api/v1/vm.create", {"payload": {"kernel": str(kernel)}, "memory": {"size": 1, "huge": True}})
    assert status == 400 and "Additional properties are not allowed ('huge'" in text
    status, _ = api(sock, "PUT", "/api/v1/vm.create", {"payload": {"kernel": str(kernel)},
                                                       "cpus": {"boot_vcpus": 2, "max_vcpus": 1}})
    assert status == 400
    assert api(sock, "PUT", "/api/v1/vm.create", {"payload": {"kernel": str(kernel)}})[0] == 204
    assert api(sock, "PUT", "/api/v1/vm.create", {"payload": {"kernel": str(kernel)}})[0] == 500  # twice
    assert api(sock, "PUT", "/api/v1/vm.pause")[0] == 405  # not running


EXPECTED = {
    "firecracker": [("PUT", "/machine-config"), ("PUT", "/boot-source"), ("PUT", "/drives/disk0"), ("PUT", "/vsock"),
                    ("PUT", "/balloon"), ("PUT", "/actions")],
    "cloud-hypervisor": [("PUT", "/api/v1/vm.create"), ("PUT", "/api/v1/vm.boot")],
}
PAUSE = {"firecracker": [("PATCH", "/vm")] * 2, "cloud-hypervisor": [("PUT", "/api/v1/vm.pause"), ("PUT", "/api/v1/vm.resume")]}


@pytest.mark.parametrize("flavour", ["firecracker", "cloud-hypervisor"])
def test_husk_runs_a_container_through_the_api(husk, bundle, standin, flavour):
    b = bundle(["sh", "-c", "echo hello; grep ' / ' /proc/mounts; cat /proc/cmdline; nproc"],
               edit=lambda c: (on(flavour)(c), c["linux"].setdefault("resources", {}).update(
                   memory={"limit": 300 << 20}, cpu={"quota": 200000, "period": 100000})))
    r = husk("run", "-b", b, new_id(), env=standin(flavour))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    assert out[0] == "hello"
    # Firecracker's rootfs comes on a disk; Cloud Hypervisor's over virtio-fs (virtiofsd is here).
    assert (" ext4 " if flavour == "firecracker" else " virtiofs ") in out[1]
    assert f"husk.vmm={flavour}" in out[2]
    assert out[3] == "2"
    calls = standin.calls()
    assert [(c["method"], c["path"]) for c in calls] == EXPECTED[flavour]
    if flavour == "firecracker":
        assert calls[0]["body"]["vcpu_count"] == 2 and calls[0]["body"]["mem_size_mib"] >= 300
        assert calls[3]["body"]["uds_path"] == "vsock.sock"
    else:
        vm = calls[0]["body"]
        assert vm["cpus"] == {"boot_vcpus": 2, "max_vcpus": 2} and vm["memory"]["size"] >= 300 << 20
        # The paths the VMM sees in its jail.
        assert vm["payload"]["kernel"] == "/kernel" and vm["payload"]["initramfs"] == "/initrd.img"
        assert vm["vsock"]["socket"] == "vsock.sock" and "disks" not in vm
        assert vm["fs"] == [{"id": "fs0", "tag": "husk", "socket": "fs.sock", "num_queues": 1, "queue_size": 1024}]
        assert vm["memory"]["shared"] is True


@pytest.mark.parametrize("flavour", ["firecracker", "cloud-hypervisor"])
def test_pause_and_resume_go_through_the_api(husk, bundle, standin, flavour):
    cid = new_id()
    env = standin(flavour)
    b = bundle(["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/tick; sleep 0.2; done"], edit=on(flavour))
    husk("create", "-b", b, cid, check=True, env=env)
    husk("start", cid, check=True, env=env)

    def tick():
        r = husk("exec", cid, "cat", "/tmp/tick", env=env)
        return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else 0

    wait_for(lambda: tick() > 0, "the workload's first tick")
    husk("pause", cid, check=True, env=env)
    assert husk.state(cid)["status"] == "paused"
    husk("resume", cid, check=True, env=env)
    assert husk.state(cid)["status"] == "running"
    t = tick()
    wait_for(lambda: tick() > t, "the workload to run on after resume")
    husk("delete", "--force", cid, check=True, env=env)
    calls = [(c["method"], c["path"]) for c in standin.calls()]
    assert calls[len(EXPECTED[flavour]):] == PAUSE[flavour]
    bodies = [c["body"] for c in standin.calls()[len(EXPECTED[flavour]):]]
    if flavour == "firecracker":
        assert bodies == [{"state": "Paused"}, {"state": "Resumed"}]


@pytest.mark.parametrize("flavour", ["firecracker", "cloud-hypervisor"])
def test_the_container_network_goes_to_the_vmm_by_tap_name(husk, bundle, standin, flavour, netpair):
    # Both VMMs open their taps by name: the shim leaves a persistent tap
    # (owned by the VMM's uid) for each link of the netns, names it in the
    # config, and deletes it when the VM is gone.
    cid, env = new_id(), standin(flavour)
    b = bundle(["sleep", "1000"], edit=lambda c: (on(flavour)(c), in_netns(netpair["path"])(c)))
    husk("run", "-d", "-b", b, cid, check=True, env=env)
    r = sh("ip", "netns", "exec", netpair["peer"], "busybox", "ping", "-c", "2", "-W", "5", netpair["addr"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "persist on" in sh("ip", "-n", netpair["ctr"], "-d", "link", "show", "tap0_husk").stdout
    mac = link(netpair["ctr"], "eth0")["address"]
    calls = standin.calls()
    if flavour == "firecracker":
        nets = [c["body"] for c in calls if c["path"].startswith("/network-interfaces/")]
        assert nets == [{"iface_id": "net0", "host_dev_name": "tap0_husk", "guest_mac": mac}]
    else:
        assert calls[0]["body"]["net"] == [{"id": "net0", "tap": "tap0_husk", "mac": mac, "mtu": 1400}]
    husk("delete", "--force", cid, check=True, env=env)
    assert_untouched(netpair["ctr"])


@pytest.mark.parametrize("flavour", ["firecracker", "cloud-hypervisor"])
def test_the_vmm_runs_jailed(husk, bundle, standin, flavour):
    # Its own mount and pid namespaces, a root that holds only what it
    # serves and needs, no capabilities, no new privileges.
    cid, env = new_id(), standin(flavour)
    husk("run", "-d", "-b", bundle(["sleep", "1000"], edit=on(flavour)), cid, check=True, env=env)
    vmm = jailed_vmm(husk, cid)
    root = sorted(os.listdir(f"/proc/{vmm}/root"))
    assert {"kernel", "initrd.img", "vmm", "vmm-bin", "vmm.log", "usr", "dev", "proc", "tmp"} <= set(root)
    # The rootfs: Firecracker's disk; virtiofsd's to serve for Cloud Hypervisor (not in this jail).
    assert ("disk0" in root) == (flavour == "firecracker") and "share0" not in root
    assert not {"etc", "home", "root", "run", "var", "boot"} & set(root), root
    assert sorted(os.listdir(f"/proc/{vmm}/root/dev")) == jail_devices(husk, flavour)
    # Its sockets are the state dir's vmm/ on the host.
    assert {"api.sock", "vsock.sock"} <= set(os.listdir(os.path.join(husk.root, cid, "vmm")))
    st = dict(l.split(":", 1) for l in open(f"/proc/{vmm}/status").read().splitlines() if ":" in l)
    assert int(st["CapBnd"].strip(), 16) == 0 and int(st["CapEff"].strip(), 16) == 0
    assert st["NoNewPrivs"].strip() == "1"
    assert st["NSpid"].split()[-1] == "2"  # pid 2 of its own namespace (1 is the jail's reaper)
    assert os.readlink(f"/proc/{vmm}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    husk("delete", "--force", cid, check=True, env=env)


def test_an_api_error_reaches_the_caller_and_nothing_is_left(husk, bundle, standin):
    b = bundle(["true"], edit=on("firecracker"))
    r = husk("run", "-b", b, new_id(), env=standin("firecracker", HUSK_STANDIN_FAIL="PUT /drives/disk0"))
    assert r.returncode != 0
    assert "firecracker: PUT /drives/disk0: 400: the stand-in was told to fail this call" in r.stderr.decode()
    # (the husk fixture asserts no state dir, VMM, QEMU or mount is left)


@pytest.mark.skipif(os.access("/dev/kvm", os.W_OK), reason="this host has /dev/kvm")
def test_without_kvm_the_drivers_are_refused_saying_why(husk, bundle, standin):
    env = standin("firecracker")
    del env["HUSK_TEST_VMM_STANDIN"]
    features = json.loads(husk("features", check=True, env=env).stdout)["annotations"]
    assert features["org.husk.hypervisor.firecracker"] == "unavailable: needs /dev/kvm, which this host does not have"
    r = husk("run", "-b", bundle(["true"], edit=on("firecracker")), new_id(), env=env)
    assert r.returncode != 0
    assert "needs /dev/kvm" in r.stderr.decode()


# ------------------------------------------------------------ templates
# Cloud Hypervisor's: vm.snapshot of the template-shaped VM (no share, no
# NIC, shared memory), vm.restore into a new VMM, then vm.add-fs and
# vm.add-net for the container (docs/design.md, "VM templates").

CH_MADE = [("PUT", "/api/v1/vm.create"), ("PUT", "/api/v1/vm.boot"), ("PUT", "/api/v1/vm.pause"),
           ("PUT", "/api/v1/vm.snapshot"), ("PUT", "/api/v1/vm.resume"), ("PUT", "/api/v1/vm.add-fs")]
CH_FS = {"id": "fs0", "tag": "husk", "socket": "fs.sock", "num_queues": 1, "queue_size": 1024}
SNAPSHOT_URL = "file:///vmm/template"


def ch_templates(standin, tmp_path):
    return standin("cloud-hypervisor", HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(tmp_path / "templates"))


def saved_templates(tmp_path):
    d = tmp_path / "templates"
    return sorted(d / p for p in os.listdir(d) if p.endswith(".state")) if d.is_dir() else []


def test_cloud_hypervisor_makes_a_template_by_snapshot_and_restores_it(husk, bundle, standin, tmp_path, netpair):
    env = ch_templates(standin, tmp_path)
    b = bundle(["sh", "-c", "echo hello; grep ' / ' /proc/mounts"], edit=on("cloud-hypervisor"))
    r = husk("run", "-b", b, new_id(), glob=("--debug",), env=env)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert re.search(r'msg="template: [0-9a-f]{32} saved in \d+ ms"', err), err[-3000:]
    out = r.stdout.decode().splitlines()
    assert out[0] == "hello" and " virtiofs " in out[1]
    calls = standin.calls()
    assert [(c["method"], c["path"]) for c in calls] == CH_MADE
    vm = calls[0]["body"]
    assert "fs" not in vm and "net" not in vm and vm["memory"]["shared"] is True
    assert "husk.template=1" in vm["payload"]["cmdline"]
    assert calls[3]["body"] == {"destination_url": SNAPSHOT_URL}
    assert calls[5]["body"] == CH_FS
    assert len(saved_templates(tmp_path)) == 1

    # The next container restores it, and gets its share and its NIC.
    standin.forget()
    cid = new_id()
    b2 = bundle(["sh", "-c", "echo restored > /from-clone; exec sleep 1000"],
                edit=lambda c: (on("cloud-hypervisor")(c), in_netns(netpair["path"])(c)))
    r = husk("run", "-d", "-b", b2, cid, glob=("--debug",), env=env)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert "template: restoring " in err and "Linux version" not in err, err[-3000:]
    calls = standin.calls()
    assert [(c["method"], c["path"]) for c in calls] == [
        ("PUT", "/api/v1/vm.restore"), ("PUT", "/api/v1/vm.resume"), ("PUT", "/api/v1/vm.add-fs"),
        ("PUT", "/api/v1/vm.add-net")]
    assert calls[0]["body"] == {"source_url": SNAPSHOT_URL}
    assert calls[2]["body"] == CH_FS
    mac = link(netpair["ctr"], "eth0")["address"]
    assert calls[3]["body"] == {"id": "net0", "tap": "tap0_husk", "mac": mac, "mtu": 1400}
    written = os.path.join(b2, "rootfs", "from-clone")
    # (made, then written: the file may be seen empty for a moment)
    wait_for(lambda: os.path.exists(written) and open(written).read() == "restored\n", "the clone's write on its share")
    r = sh("ip", "netns", "exec", netpair["peer"], "busybox", "ping", "-c", "2", "-W", "5", netpair["addr"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert husk("exec", cid, "cat", "/from-clone", env=env, check=True).stdout == b"restored\n"
    # The snapshot was unpacked for the restore only.
    assert not os.path.exists(os.path.join(husk.root, cid, "vmm", "template"))
    husk("delete", "--force", cid, check=True, env=env)
    assert_untouched(netpair["ctr"])


def test_a_cloud_hypervisor_template_that_does_not_restore_is_dropped_and_the_vm_boots(husk, bundle, standin, tmp_path):
    env = ch_templates(standin, tmp_path)
    b = bundle(["echo", "hi"], edit=on("cloud-hypervisor"))
    husk("run", "-b", b, new_id(), env=env, check=True)
    (f,) = saved_templates(tmp_path)
    # Rewrite the packed snapshot (api_vmm.h) with its memory cut short:
    # it unpacks, and the VMM's restore fails on it.
    data = f.read_bytes()
    head, rest = data.split(b"\n", 1)
    assert head == b"husk snapshot 1"
    entries = []
    while not rest.startswith(b"end\n"):
        line, rest = rest.split(b"\n", 1)
        size, name = line.split(b" ", 1)
        entries.append((name, rest[:int(size)]))
        rest = rest[int(size):]
    assert {n for n, _ in entries} == {b"config.json", b"state.json", b"memory-ranges"}
    packed = b"husk snapshot 1\n"
    for name, body in entries:
        if name == b"memory-ranges":
            body = body[:len(body) // 2]
        packed += b"%d %s\n" % (len(body), name) + body
    f.write_bytes(packed + b"end\n")
    reseal(f)  # as if saved so: what the VMM makes of it is the test
    log = tmp_path / "husk.log"
    r = husk("run", "-b", b, new_id(), glob=("--log", str(log)), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hi\n"
    text = log.read_text()
    assert re.search(r'level=warning msg="template [0-9a-f]{32} did not restore after \d+ ms \(cloud-hypervisor: '
                     r'PUT /api/v1/vm.restore: 500: .*\): dropped, booting the VM instead"', text), text[-3000:]
    assert text.count("its log ends") == 1, text[-3000:]  # the VMM's log tail, once
    assert saved_templates(tmp_path) == []
    # (the husk fixture asserts no state dir, VMM, QEMU or mount is left)


# Firecracker's: no hot-plug at all, so its template holds the NICs (taps
# by name, the same in every container's netns; MACs of the template's,
# which the agent swaps for the container's at attach) and an empty disk
# where the container's rootfs disk goes (PATCH /drives after the save or
# the load); /snapshot/create of the paused VM, /snapshot/load resumed.

FC_BOOT = [("PUT", "/machine-config"), ("PUT", "/boot-source"), ("PUT", "/drives/disk0"),
           ("PUT", "/network-interfaces/net0"), ("PUT", "/vsock"), ("PUT", "/balloon"), ("PUT", "/actions")]
FC_SNAPSHOT = {"snapshot_type": "Full", "snapshot_path": "/vmm/template/vmstate", "mem_file_path": "/vmm/template/memory"}
FC_LOAD = {"snapshot_path": "/vmm/template/vmstate", "mem_backend": {"backend_type": "File", "backend_path": "/vmm/template/memory"},
           "resume_vm": True}
FC_DISK = {"drive_id": "disk0", "path_on_host": "/disk0"}


def test_firecracker_makes_a_template_by_snapshot_and_loads_it(husk, bundle, standin, tmp_path, netpair):
    env = standin("firecracker", HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(tmp_path / "templates"))
    mac = link(netpair["ctr"], "eth0")["address"]
    in_pair = lambda c: (on("firecracker")(c), in_netns(netpair["path"])(c))  # noqa: E731
    b = bundle(["sh", "-c", "echo hello; cat /sys/class/net/eth0/address"], edit=in_pair)
    r = husk("run", "-b", b, new_id(), glob=("--debug",), env=env)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert re.search(r'msg="template: [0-9a-f]{32} saved in \d+ ms"', err), err[-3000:]
    out = r.stdout.decode().splitlines()
    # The maker's guest: its rootfs disk patched in after the save, its NIC
    # with the container's MAC (the template's was another).
    assert out[:2] == ["hello", mac], out
    calls = standin.calls()
    assert [(c["method"], c["path"]) for c in calls] == FC_BOOT + [
        ("PATCH", "/vm"), ("PUT", "/snapshot/create"), ("PATCH", "/vm"), ("PATCH", "/drives/disk0")]
    assert calls[2]["body"]["path_on_host"] == "/vmm/placeholder.img"
    assert calls[3]["body"] == {"iface_id": "net0", "host_dev_name": "tap0_husk", "guest_mac": "02:68:75:73:6b:00"}
    assert "husk.template=1" in calls[1]["body"]["boot_args"]
    assert calls[8]["body"] == FC_SNAPSHOT
    assert calls[10]["body"] == FC_DISK
    assert len(saved_templates(tmp_path)) == 1

    # The next container loads it, gets its disk, its MAC and its network.
    standin.forget()
    cid = new_id()
    b2 = bundle(["sh", "-c", "echo restored > /from-clone; exec sleep 1000"], edit=in_pair)
    r = husk("run", "-d", "-b", b2, cid, glob=("--debug",), env=env)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 0, err[-3000:]
    assert "template: restoring " in err and "Linux version" not in err, err[-3000:]
    calls = standin.calls()
    assert [(c["method"], c["path"]) for c in calls] == [("PUT", "/snapshot/load"), ("PATCH", "/drives/disk0")]
    assert calls[0]["body"] == FC_LOAD
    assert calls[1]["body"] == FC_DISK
    r = sh("ip", "netns", "exec", netpair["peer"], "busybox", "ping", "-c", "2", "-W", "5", netpair["addr"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert husk("exec", cid, "cat", "/sys/class/net/eth0/address", env=env, check=True).stdout.decode().strip() == mac
    wait_for(lambda: husk("exec", cid, "cat", "/from-clone", env=env).stdout == b"restored\n", "the clone's write")
    assert not os.path.exists(os.path.join(husk.root, cid, "vmm", "template"))
    husk("delete", "--force", cid, check=True, env=env)
    assert_untouched(netpair["ctr"])


def test_a_firecracker_clone_whose_disk_cannot_be_patched_in_is_dropped_and_the_vm_boots(husk, bundle, standin, tmp_path):
    env = standin("firecracker", HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(tmp_path / "templates"))
    b = bundle(["echo", "hi"], edit=on("firecracker"))
    husk("run", "-b", b, new_id(), env=env, check=True)
    assert len(saved_templates(tmp_path)) == 1
    standin.forget()
    log = tmp_path / "husk.log"
    r = husk("run", "-b", b, new_id(), glob=("--log", str(log)),
             env=dict(env, HUSK_STANDIN_FAIL="PATCH /drives/disk0"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hi\n"
    text = log.read_text()
    assert re.search(r'level=warning msg="template [0-9a-f]{32} did not restore after \d+ ms \(give the VM its rootfs '
                     r'disk: PATCH /drives/disk0: 400: the stand-in was told to fail this call.*\): dropped, '
                     r'booting the VM instead"', text), text[-3000:]
    assert saved_templates(tmp_path) == []
    # The VM that booted instead has its disk from the start.
    calls = [(c["method"], c["path"]) for c in standin.calls()]
    assert calls[:2] == [("PUT", "/snapshot/load"), ("PATCH", "/drives/disk0")]
    assert calls[2:] == FC_BOOT[:3] + FC_BOOT[4:], calls
    # (the husk fixture asserts no state dir, VMM, QEMU or mount is left)


# Checkpoints (husk checkpoint / restore) through the snapshot calls: the
# VM saved paused into the image (packed), loaded into a new VMM; the
# rootfs disk (Firecracker's always, Cloud Hypervisor's when asked) copied.

@pytest.mark.parametrize("flavour", ["firecracker", "cloud-hypervisor"])
def test_a_checkpoint_goes_through_the_snapshot_calls_and_restores(husk, bundle, standin, flavour, tmp_path):
    env = standin(flavour)
    counter = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"]
    b = bundle(counter, edit=lambda c: (on(flavour)(c), c.setdefault("annotations", {}).update({"org.husk.rootfs": "disk"})))
    cid = new_id()
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    count = lambda p: [int(x) for x in open(p).read().split()]  # noqa: E731
    with open(out1, "wb") as f:
        husk("run", "-d", "-b", b, cid, stdout=f, env=env, check=True)
    wait_for(lambda: len(count(out1)) >= 5, "the counter")
    booted = len(standin.calls())  # (the record file stays the running VMM's: no forget() now)
    image = tmp_path / "image"
    r = husk("checkpoint", "--image-path", str(image), cid, env=env)
    assert r.returncode == 0, r.stderr
    save = [(c["method"], c["path"]) for c in standin.calls()[booted:]]
    assert save[:2] == ([("PATCH", "/vm"), ("PUT", "/snapshot/create")] if flavour == "firecracker" else
                        [("PUT", "/api/v1/vm.pause"), ("PUT", "/api/v1/vm.snapshot")]), save
    before = count(out1)
    standin.forget()
    with open(out2, "wb") as f:
        r = husk("restore", "-d", "--image-path", str(image), "-b", b, cid, stdout=f, env=env)
    assert r.returncode == 0, r.stderr
    load = [(c["method"], c["path"]) for c in standin.calls()]
    assert load == ([("PUT", "/snapshot/load")] if flavour == "firecracker" else
                    [("PUT", "/api/v1/vm.restore"), ("PUT", "/api/v1/vm.resume")]), load
    wait_for(lambda: len(count(out2)) >= 3, "the restored counter")
    assert count(out2)[0] == before[-1] + 1, (before[-3:], count(out2)[:3])
    assert husk("exec", cid, "true", env=env).returncode == 0
    husk("delete", "--force", cid, check=True, env=env)


def test_a_firecracker_container_from_a_template_checkpoints_and_restores(husk, bundle, standin, tmp_path):
    env = standin("firecracker", HUSK_TEMPLATES="1", HUSK_TEMPLATE_DIR=str(tmp_path / "templates"))
    counter = ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done"]
    b = bundle(counter, edit=on("firecracker"))
    husk("run", "-b", bundle(["true"], edit=on("firecracker")), new_id(), env=env, check=True)  # makes the template
    cid, out1, out2 = new_id(), tmp_path / "out1", tmp_path / "out2"
    count = lambda p: [int(x) for x in open(p).read().split()]  # noqa: E731
    with open(out1, "wb") as f:
        r = husk("run", "-d", "-b", b, cid, stdout=f, env=env, glob=("--debug",))
    assert r.returncode == 0 and b"template: restoring" in r.stderr, r.stderr[-2000:]
    wait_for(lambda: len(count(out1)) >= 5, "the counter")
    image = tmp_path / "image"
    husk("checkpoint", "--image-path", str(image), cid, env=env, check=True)
    before = count(out1)
    with open(out2, "wb") as f:
        husk("restore", "-d", "--image-path", str(image), "-b", b, cid, stdout=f, env=env, check=True)
    wait_for(lambda: len(count(out2)) >= 3, "the restored counter")
    assert count(out2)[0] == before[-1] + 1
    husk("delete", "--force", cid, check=True, env=env)


def test_a_template_that_cannot_be_saved_leaves_its_maker_running(husk, bundle, standin, tmp_path):
    # The VMM refuses the snapshot: the save runs the guest on, and the
    # container that was to make the template goes on without one.
    env = dict(ch_templates(standin, tmp_path), HUSK_STANDIN_FAIL="PUT /api/v1/vm.snapshot")
    log = tmp_path / "husk.log"
    r = husk("run", "-b", bundle(["echo", "made"], edit=on("cloud-hypervisor")), new_id(), glob=("--log", str(log)), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"made\n"
    assert re.search(r'level=warning msg="template [0-9a-f]{32} not saved: .*the stand-in was told to fail this call', log.read_text())
    assert saved_templates(tmp_path) == []
