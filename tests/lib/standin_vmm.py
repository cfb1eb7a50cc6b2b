#!/usr/bin/python3
"""A stand-in for Firecracker or Cloud Hypervisor, for hosts that have
neither (this one: no binary, no /dev/kvm).

It serves the VMM's REST API on the unix socket named on its command line,
as the real one does, and holds every request to the API definition: the
paths and methods, the request bodies (schemas below, written from
Firecracker's swagger definition v1.x and Cloud Hypervisor's OpenAPI
definition, strict: an unknown field is an error, as serde's
deny_unknown_fields makes it in both), and the order (pre-boot calls
only before the start, pause only while running, ...). A bad request gets
the VMM's error response: 400 and {"fault_message"} for Firecracker, an
error status and text for Cloud Hypervisor.

On start it boots the guest for real, under QEMU TCG on q35: the
uncompressed vmlinux by its PVH entry (as both VMMs boot it), the
configured drives, NICs (the taps opened by name, as both VMMs do:
husk must have made them) and virtio-fs devices (Cloud Hypervisor's `fs`,
connected to husk's virtiofsd; the guest's RAM is then a shared memfd, and
`memory.shared` must say so, as Cloud Hypervisor insists), the serial console on our stdout. The hybrid vsock
socket is served here: "CONNECT <port>" is answered "OK <n>" and bridged
to the agent's port, which under QEMU is a virtio-serial port. Liberties
taken on the guest command line, both because this is QEMU and not the
real device model: husk.channel=vsock becomes serial, and Firecracker's
pci=off is dropped (its devices are virtio-mmio; here they are PCI,
because QEMU's microvm machine hangs now and then under TCG calibrating
the TSC: it has no HPET to calibrate against). Pause and resume go to
QEMU's QMP.

Usage: standin_vmm.py firecracker --api-sock PATH [--log-path F] [...]
       standin_vmm.py cloud-hypervisor --api-socket path=PATH
(or run it through a symlink named firecracker / cloud-hypervisor).
Every request is appended as a JSON line to $HUSK_STANDIN_RECORD if set.
$HUSK_STANDIN_FAIL="METHOD PATH" makes that call fail as the VMM would.
"""
import ctypes
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import jsonschema


def obj(required, **props):
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


STR, BOOL, INT = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}
TOKEN_BUCKET = obj(["size", "refill_time"], size=INT, one_time_burst=INT, refill_time=INT)
RATE_LIMITER = obj([], bandwidth=TOKEN_BUCKET, ops=TOKEN_BUCKET)

# Firecracker: swagger 2.0 definitions (src/firecracker/swagger/firecracker.yaml).
FC = {
    ("PUT", "/machine-config"): obj(
        ["mem_size_mib", "vcpu_count"], mem_size_mib=INT, vcpu_count={"type": "integer", "minimum": 1, "maximum": 32},
        smt=BOOL, track_dirty_pages=BOOL, cpu_template={"enum": ["C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"]},
        huge_pages={"enum": ["None", "Transparent", "2M"]}),
    ("PUT", "/boot-source"): obj(["kernel_image_path"], kernel_image_path=STR, boot_args=STR, initrd_path=STR),
    ("PUT", "/drives/{id}"): obj(
        ["drive_id", "is_root_device"], drive_id=STR, partuuid=STR, is_root_device=BOOL,
        cache_type={"enum": ["Unsafe", "Writeback"]}, is_read_only=BOOL, path_on_host=STR, rate_limiter=RATE_LIMITER,
        io_engine={"enum": ["Sync", "Async"]}, socket=STR),
    ("PUT", "/network-interfaces/{id}"): obj(
        ["host_dev_name", "iface_id"], guest_mac=STR, host_dev_name=STR, iface_id=STR,
        mtu={"type": "integer", "minimum": 68, "maximum": 65535}, rx_rate_limiter=RATE_LIMITER,
        tx_rate_limiter=RATE_LIMITER),
    ("PUT", "/vsock"): obj(["guest_cid", "uds_path"], guest_cid={"type": "integer", "minimum": 3}, uds_path=STR,
                           vsock_id=STR),
    ("PUT", "/balloon"): obj(["amount_mib", "deflate_on_oom"], amount_mib=INT, deflate_on_oom=BOOL,
                             stats_polling_interval_s=INT, free_page_hinting=BOOL, free_page_reporting=BOOL),
    ("PUT", "/logger"): obj([], level={"enum": ["Error", "Warning", "Info", "Debug", "Trace", "Off"]}, log_path=STR,
                            show_level=BOOL, show_log_origin=BOOL, module=STR),
    ("PUT", "/actions"): obj(["action_type"], action_type={"enum": ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]}),
    ("PATCH", "/vm"): obj(["state"], state={"enum": ["Paused", "Resumed"]}),
    ("PATCH", "/drives/{id}"): obj(["drive_id"], drive_id=STR, path_on_host=STR, rate_limiter=RATE_LIMITER),
    ("PUT", "/snapshot/create"): obj(["mem_file_path", "snapshot_path"], mem_file_path=STR, snapshot_path=STR,
                                     snapshot_type={"enum": ["Full", "Diff"]}),
    ("PUT", "/snapshot/load"): obj(
        ["snapshot_path"], enable_diff_snapshots=BOOL, track_dirty_pages=BOOL, mem_file_path=STR,
        mem_backend=obj(["backend_type", "backend_path"], backend_type={"enum": ["File", "Uffd"]}, backend_path=STR),
        snapshot_path=STR, resume_vm=BOOL,
        network_overrides={"type": "array", "items": obj(["iface_id", "host_dev_name"], iface_id=STR, host_dev_name=STR)},
        vsock_override=obj(["uds_path"], uds_path=STR), clock_realtime=BOOL),
    ("GET", "/"): None,
}

# Cloud Hypervisor: OpenAPI 3 schemas (vmm/src/api/openapi/cloud-hypervisor.yaml).
CONSOLE = obj(["mode"], file=STR, socket=STR, mode={"enum": ["Off", "Pty", "Tty", "File", "Socket", "Null"]},
              iommu=BOOL, id=STR, pci_segment=INT, pci_device_id=INT)
SERIAL = obj(["mode"], file=STR, socket=STR, mode={"enum": ["Off", "Pty", "Tty", "File", "Socket", "Null"]})
CH_FS = obj(["num_queues", "queue_size", "socket", "tag"], tag=STR, socket=STR, num_queues=INT, queue_size=INT, id=STR,
            pci_segment=INT, pci_device_id=INT)
CH_NET = obj(
    [], tap=STR, ip=STR, mask=STR, mac=STR, host_mac=STR, mtu=INT, iommu=BOOL, num_queues=INT, queue_size=INT,
    vhost_user=BOOL, vhost_socket=STR, vhost_mode=STR, id=STR, pci_segment=INT, pci_device_id=INT,
    rate_limiter_config=RATE_LIMITER, offload_tso=BOOL, offload_ufo=BOOL, offload_csum=BOOL)
CH_VM = obj(
    ["payload"],
    cpus=obj(["boot_vcpus", "max_vcpus"], boot_vcpus={"type": "integer", "minimum": 1},
             max_vcpus={"type": "integer", "minimum": 1}, kvm_hyperv=BOOL, max_phys_bits=INT, nested=BOOL),
    memory=obj(["size"], size=INT, hotplug_size=INT, hotplugged_size=INT, mergeable=BOOL, hotplug_method=STR,
               shared=BOOL, hugepages=BOOL, hugepage_size=INT, prefault=BOOL, reserve=BOOL, thp=BOOL),
    payload=obj([], firmware=STR, kernel=STR, cmdline=STR, initramfs=STR, igvm=STR, host_data=STR),
    disks={"type": "array", "items": obj(
        [], path=STR, readonly=BOOL, direct=BOOL, iommu=BOOL, num_queues=INT, queue_size=INT, vhost_user=BOOL,
        vhost_socket=STR, rate_limiter_config=RATE_LIMITER, pci_segment=INT, pci_device_id=INT, id=STR, serial=STR,
        rate_limit_group=STR, backing_files=BOOL, sparse=BOOL,
        image_type={"enum": ["FlatVmdk", "FixedVhd", "Qcow2", "Raw", "Vhdx", "Unknown"]})},
    net={"type": "array", "items": CH_NET},
    rng=obj(["src"], id=STR, pci_segment=INT, pci_device_id=INT, iommu=BOOL, src=STR),
    balloon=obj(["size"], id=STR, pci_segment=INT, pci_device_id=INT, iommu=BOOL, size=INT, deflate_on_oom=BOOL,
                free_page_reporting=BOOL),
    serial=SERIAL,
    console=CONSOLE,
    vsock=obj(["cid", "socket"], cid={"type": "integer", "minimum": 3}, socket=STR, iommu=BOOL, pci_segment=INT,
              pci_device_id=INT, id=STR),
    fs={"type": "array", "items": CH_FS},
    iommu=BOOL, watchdog=BOOL, pvpanic=BOOL, landlock_enable=BOOL,
)
CH = {
    ("PUT", "/api/v1/vm.create"): CH_VM,
    ("PUT", "/api/v1/vm.boot"): None,
    ("PUT", "/api/v1/vm.pause"): None,
    ("PUT", "/api/v1/vm.resume"): None,
    ("PUT", "/api/v1/vm.shutdown"): None,
    ("PUT", "/api/v1/vmm.shutdown"): None,
    ("GET", "/api/v1/vmm.ping"): None,
    ("GET", "/api/v1/vm.info"): None,
    ("PUT", "/api/v1/vm.snapshot"): obj([], destination_url=STR),
    ("PUT", "/api/v1/vm.restore"): obj(
        ["source_url"], source_url=STR, prefault=BOOL, memory_restore_mode={"enum": ["Copy", "OnDemand", "CopyOnWrite"]},
        resume=BOOL, zone_updates={"type": "array", "items": obj(["id", "host_numa_node"], id=STR, host_numa_node=INT)}),
    ("PUT", "/api/v1/vm.add-fs"): CH_FS,
    ("PUT", "/api/v1/vm.add-net"): CH_NET,
}
# Where a hot-added device goes: the stand-in's q35 has this many
# pcie-root-ports (Cloud Hypervisor's PCI segment has 31 free slots).
HOTPLUG_PORTS = 10
# A snapshot directory as Cloud Hypervisor writes one: the VM's config,
# its device state and its memory (here: QEMU's migration stream, which
# holds both; state.json says so).
SNAP_CONFIG, SNAP_STATE, SNAP_MEMORY = "config.json", "state.json", "memory-ranges"


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class StandIn:
    def __init__(self, flavour, api_sock, log_path):
        self.flavour = flavour
        self.api_sock = api_sock
        self.log = open(log_path, "a") if log_path else sys.stderr
        self.defs = FC if flavour == "firecracker" else CH
        self.config = {"drives": {}, "nets": {}}
        self.state = "Not started"  # then Running / Paused
        self.qemu = None
        self.qmp = None
        self.ports_used = 0
        self.drive_gen = 0
        self.lock = threading.Lock()

    def say(self, msg):
        print(f"standin-{self.flavour}: {msg}", file=self.log, flush=True)

    # ---------------------------------------------------------------- API

    def route(self, method, path):
        for (m, p), schema in self.defs.items():
            if m != method:
                continue
            if p == path or (p.endswith("/{id}") and path.startswith(p[:-4]) and "/" not in path[len(p) - 4:]
                             and len(path) > len(p) - 4):
                return p, schema
        raise ApiError(400 if self.flavour == "firecracker" else 404, f"Invalid request method and/or path: {method} {path}")

    def handle(self, method, path, body):
        record = os.environ.get("HUSK_STANDIN_RECORD")
        if record:
            with open(record, "a") as f:
                f.write(json.dumps({"method": method, "path": path, "body": body}) + "\n")
        if os.environ.get("HUSK_STANDIN_FAIL") == f"{method} {path}":
            raise ApiError(400 if self.flavour == "firecracker" else 500, "the stand-in was told to fail this call")
        route, schema = self.route(method, path)
        if schema is None and body is not None:
            raise ApiError(400, f"{method} {path} takes no body")
        if schema is not None:
            if body is None:
                raise ApiError(400, "Missing body")
            try:
                jsonschema.validate(body, schema)
            except jsonschema.ValidationError as e:
                where = "/".join(str(p) for p in e.absolute_path) or "(body)"
                raise ApiError(400, f"invalid {route} body at {where}: {e.message}")
        with self.lock:
            return (self.firecracker if self.flavour == "firecracker" else self.cloud_hypervisor)(method, route, path, body)

    def must_exist(self, path, what):
        if not os.path.exists(path):
            raise ApiError(400, f"{what} {path}: No such file or directory")

    def must_be_tap(self, name):
        # Both VMMs open the tap by name in their network namespace; the
        # stand-in holds husk to having made it (QEMU would make one).
        # (if_nametoindex: /sys shows the netns that mounted it, not ours.)
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise ApiError(400, f"Could not create the network device: Open tap device failed: {name}: "
                                "No such device") from None

    def firecracker(self, method, route, path, body):
        preboot = method == "PUT" and route not in ("/actions", "/snapshot/create")
        if preboot and self.state != "Not started":
            raise ApiError(400, "The requested operation is not supported after starting the microVM.")
        if route == "/snapshot/load" and any(self.config.values()):
            raise ApiError(400, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
        if method == "PATCH" and self.state == "Not started":
            raise ApiError(400, "The requested operation is not supported before starting the microVM.")
        if route == "/machine-config":
            self.config["machine"] = body
        elif route == "/boot-source":
            self.must_exist(body["kernel_image_path"], "kernel")
            if "initrd_path" in body:
                self.must_exist(body["initrd_path"], "initrd")
            self.config["boot"] = body
        elif route == "/drives/{id}" and method == "PUT":
            if body["drive_id"] != path.rsplit("/", 1)[1]:
                raise ApiError(400, "The id from the path does not match the id from the body!")
            self.must_exist(body.get("path_on_host", ""), "drive")
            self.config["drives"][body["drive_id"]] = body
        elif route == "/network-interfaces/{id}":
            if body["iface_id"] != path.rsplit("/", 1)[1]:
                raise ApiError(400, "The id from the path does not match the id from the body!")
            self.must_be_tap(body["host_dev_name"])
            self.config["nets"][body["iface_id"]] = body
        elif route == "/vsock":
            self.config["vsock"] = body
        elif route == "/balloon":
            self.config["balloon"] = body
        elif route == "/actions" and body["action_type"] == "InstanceStart":
            if self.state != "Not started":
                raise ApiError(400, "The requested operation is not supported after starting the microVM.")
            if "boot" not in self.config:
                raise ApiError(400, "Cannot start microvm without kernel configuration.")
            self.boot_fc(self.config)
        elif route == "/vm":
            self.set_paused(body["state"] == "Paused")
        elif route == "/drives/{id}" and method == "PATCH":
            self.patch_drive(path.rsplit("/", 1)[1], body)
        elif route == "/snapshot/create":
            self.fc_snapshot(body)
        elif route == "/snapshot/load":
            self.fc_load(body)
        elif route == "/":
            return 200, {"id": "husk", "state": self.state, "vmm_version": "stand-in", "app_name": "Firecracker"}
        return 204, None

    def boot_fc(self, config, incoming=None):
        m = config.get("machine", {"vcpu_count": 1, "mem_size_mib": 128})
        self.boot(kernel=config["boot"]["kernel_image_path"], initrd=config["boot"].get("initrd_path"),
                  cmdline=config["boot"].get("boot_args", ""), vcpus=m["vcpu_count"], mem_mib=m["mem_size_mib"],
                  drives=[(d["path_on_host"], d.get("is_read_only", False)) for d in config["drives"].values()],
                  nics=[(n["host_dev_name"], n.get("guest_mac"), None) for n in config["nets"].values()],
                  vsock=config.get("vsock", {}).get("uds_path"), balloon="balloon" in config, incoming=incoming)

    def patch_drive(self, drive_id, body):
        """PATCH /drives/{id}: a running VM's drive moved to another file
        (or the same one, grown): the guest is told its new size, as
        Firecracker's block device does. Here: QEMU's node swapped under
        the device (blockdev-reopen) and block_resize to notify."""
        if body["drive_id"] != drive_id:
            raise ApiError(400, "The id from the path does not match the id from the body!")
        ids = list(self.config["drives"])
        if drive_id not in ids:
            raise ApiError(400, f"Invalid block device ID: {drive_id}")
        drive = self.config["drives"][drive_id]
        if "path_on_host" not in body:
            return
        self.must_exist(body["path_on_host"], "drive")
        i, ro = ids.index(drive_id), drive.get("is_read_only", False)
        self.drive_gen += 1
        node = f"f{i}g{self.drive_gen}"
        self.qmp_cmd("blockdev-add", {"driver": "file", "node-name": node, "filename": body["path_on_host"], "read-only": ro})
        self.qmp_cmd("blockdev-reopen", {"options": [{"driver": "raw", "node-name": f"b{i}", "file": node, "read-only": ro}]})
        self.qmp_cmd("block_resize", {"node-name": f"b{i}", "size": os.path.getsize(body["path_on_host"])})
        drive["path_on_host"] = body["path_on_host"]

    def fc_snapshot(self, body):
        """PUT /snapshot/create: a paused VM's state (here: its config) to
        snapshot_path, its memory (here: QEMU's migration stream, with the
        device state) to mem_file_path."""
        if self.state != "Paused":
            raise ApiError(400, "Operation not allowed: the microVM is not paused.")
        if body.get("snapshot_type", "Full") != "Full":
            raise ApiError(400, "Diff snapshots require dirty page tracking (track_dirty_pages).")
        try:
            mem = open(body["mem_file_path"], "wb")
            state = open(body["snapshot_path"], "w")
        except OSError as e:
            raise ApiError(400, f"Cannot create snapshot: {e}") from None
        with mem, state:
            self.migrate_to(mem, 400)
            json.dump({"stand-in": "device state and memory: QEMU's migration stream, in the memory file",
                       "config": self.config}, state)

    def fc_load(self, body):
        """PUT /snapshot/load on a fresh VMM: the same VM again, paused
        (resumed with resume_vm), its taps (network_overrides) and vsock
        socket (vsock_override) renamed if asked."""
        if ("mem_file_path" in body) == ("mem_backend" in body):
            raise ApiError(400, "Exactly one of mem_file_path or mem_backend must be given.")
        backend = body.get("mem_backend", {"backend_type": "File", "backend_path": body.get("mem_file_path")})
        if backend["backend_type"] != "File":
            raise ApiError(400, "The stand-in loads guest memory from a file only (no Uffd).")
        try:
            with open(body["snapshot_path"]) as f:
                config = json.load(f)["config"]
            mem = open(backend["backend_path"], "rb")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ApiError(400, f"Load snapshot error: {e}") from None
        with mem:
            for o in body.get("network_overrides", []):
                if o["iface_id"] not in config["nets"]:
                    raise ApiError(400, f"Load snapshot error: no network interface {o['iface_id']} in the snapshot")
                config["nets"][o["iface_id"]]["host_dev_name"] = o["host_dev_name"]
            if "vsock_override" in body:
                config["vsock"]["uds_path"] = body["vsock_override"]["uds_path"]
            for d in config["drives"].values():
                self.must_exist(d["path_on_host"], "drive")
            for n in config["nets"].values():
                self.must_be_tap(n["host_dev_name"])
            self.config = config
            self.load(lambda incoming: self.boot_fc(config, incoming=incoming), mem,
                      lambda status: ApiError(400, f"Load snapshot error: the guest is {status}"), body.get("resume_vm"))

    def migrate_to(self, f, status):
        """The paused guest, device state and memory, into the open file `f`."""
        self.qmp_cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        self.qmp_cmd("getfd", {"fdname": "snapshot"}, fd=f.fileno())
        self.qmp_cmd("migrate", {"uri": "fd:snapshot"})
        deadline = time.monotonic() + 50
        while True:
            m = self.qmp_cmd("query-migrate")
            st = m.get("status") if isinstance(m, dict) else None
            if st == "completed":
                return
            if st in ("failed", "cancelled") or time.monotonic() > deadline:
                raise ApiError(status, ("" if self.flavour == "firecracker" else "Error from API: ") +
                               f"The VM could not be snapshotted: migration {st}: "
                                       f"{m.get('error-desc', '') if isinstance(m, dict) else ''}")
            time.sleep(0.01)

    def load(self, boot, mem, error, resume):
        """`boot(incoming=fd)` from the open snapshot `mem` (QEMU's
        -incoming), and the load waited for: the VM paused, or running
        with `resume`; `error(status)` when it does not load."""
        boot(mem.fileno())
        self.wait_loaded(error)
        self.state = "Paused"
        if resume:
            self.set_paused(False)

    def wait_loaded(self, error):
        """An incoming migration loaded (QEMU paused), or `error(status)`."""
        deadline = time.monotonic() + 15
        while True:
            status = self.qmp_cmd("query-status").get("status")
            if status == "paused":
                return
            if status != "inmigrate" or time.monotonic() > deadline:
                self.qemu.kill()
                raise error(status)
            time.sleep(0.01)

    def cloud_hypervisor(self, method, route, path, body):
        if route == "/api/v1/vm.create":
            if "vm" in self.config:
                raise ApiError(500, "Error from API: The VM could not be created: VM is already created")
            cpus = body.get("cpus", {"boot_vcpus": 1, "max_vcpus": 1})
            if cpus["boot_vcpus"] > cpus["max_vcpus"]:
                raise ApiError(400, "Error from API: Max vCPUs lower than boot vCPUs")
            p = body["payload"]
            if "kernel" not in p and "firmware" not in p:
                raise ApiError(400, "Error from API: No kernel or firmware in payload")
            for k in ("kernel", "initramfs"):
                if k in p:
                    self.must_exist(p[k], k)
            for d in body.get("disks", []):
                self.must_exist(d.get("path", ""), "disk")
            for n in body.get("net", []):
                self.must_be_tap(n.get("tap", ""))
            for f in body.get("fs", []):
                self.must_exist(f["socket"], "fs socket")
            if body.get("fs") and not body.get("memory", {}).get("shared"):
                # vhost-user devices need the guest's memory shared (as Cloud Hypervisor says)
                raise ApiError(400, "Error from API: The VM could not be created: vhost-user requires shared memory")
            self.config["vm"] = body
        elif route == "/api/v1/vm.boot":
            if "vm" not in self.config:
                raise ApiError(404, "Error from API: The VM could not boot: VM is not created")
            if self.state != "Not started":
                raise ApiError(405, "Error from API: The VM could not boot: VM is already running")
            self.boot_vm(self.config["vm"])
        elif route == "/api/v1/vm.pause":
            if self.state != "Running":
                raise ApiError(405, "Error from API: The VM could not be paused: VM is not running")
            self.set_paused(True)
        elif route == "/api/v1/vm.resume":
            if self.state != "Paused":
                raise ApiError(405, "Error from API: The VM could not be resumed: VM is not paused")
            self.set_paused(False)
        elif route in ("/api/v1/vm.shutdown", "/api/v1/vmm.shutdown"):
            if self.qemu:
                self.qemu.kill()
            if route == "/api/v1/vmm.shutdown":
                threading.Thread(target=lambda: (time.sleep(0.1), os._exit(0))).start()
        elif route == "/api/v1/vm.snapshot":
            self.snapshot(body)
        elif route == "/api/v1/vm.restore":
            self.restore(body)
        elif route in ("/api/v1/vm.add-fs", "/api/v1/vm.add-net"):
            return self.hot_add(route, body)
        elif route == "/api/v1/vmm.ping":
            return 200, {"version": "stand-in"}
        elif route == "/api/v1/vm.info":
            if "vm" not in self.config:
                raise ApiError(404, "VM is not created")
            return 200, {"config": self.config["vm"], "state": self.state}
        return 204, None

    def snapshot_dir(self, url, key):
        if not url.startswith("file://"):
            raise ApiError(500, f"Error from API: {key} {url}: not a file:// URL")
        d = url[len("file://"):]
        if not os.path.isdir(d):
            raise ApiError(500, f"Error from API: {key} {d}: No such directory")
        return d

    def snapshot(self, body):
        """vm.snapshot: a paused VM's config, state and memory, into
        destination_url (a directory that exists). The VM stays paused."""
        if self.state == "Not started":
            raise ApiError(405, "Error from API: The VM could not be snapshotted: VM is not booted")
        if self.state != "Paused":
            raise ApiError(500, "Error from API: The VM could not be snapshotted: VM is not paused")
        d = self.snapshot_dir(body.get("destination_url", ""), "destination_url")
        with open(os.path.join(d, SNAP_MEMORY), "wb") as mem:
            self.migrate_to(mem, 500)
        with open(os.path.join(d, SNAP_CONFIG), "w") as f:
            json.dump(self.config["vm"], f)
        with open(os.path.join(d, SNAP_STATE), "w") as f:
            json.dump({"stand-in": f"device state and memory: QEMU's migration stream, in {SNAP_MEMORY}"}, f)

    def restore(self, body):
        """vm.restore into a VMM with no VM yet: the same VM again, from a
        snapshot, paused (or running, with resume)."""
        if "vm" in self.config:
            raise ApiError(404, "Error from API: The VM could not be restored: VM is already created")
        d = self.snapshot_dir(body["source_url"], "source_url")
        try:
            with open(os.path.join(d, SNAP_CONFIG)) as f:
                vm = json.load(f)
            jsonschema.validate(vm, CH_VM)
            mem = open(os.path.join(d, SNAP_MEMORY), "rb")
        except (OSError, ValueError, jsonschema.ValidationError) as e:
            raise ApiError(400, f"Error from API: The VM could not be restored: {e}") from None
        with mem:
            self.config["vm"] = vm
            self.load(lambda incoming: self.boot_vm(vm, incoming=incoming), mem,
                      lambda status: ApiError(500, f"Error from API: The VM could not be restored: the guest is {status}"),
                      body.get("resume"))

    def hot_add(self, route, body):
        """vm.add-fs / vm.add-net: before the boot, into the config (204);
        on a booted VM, hot-plugged on a free root port (200, PciDeviceInfo)."""
        vm = self.config.get("vm")
        if vm is None:
            raise ApiError(404, "Error from API: The device could not be added: VM is not created")
        fs = route.endswith("add-fs")
        key, prefix = ("fs", "_fs") if fs else ("net", "_net")
        if fs:
            self.must_exist(body["socket"], "fs socket")
            if not vm.get("memory", {}).get("shared"):
                raise ApiError(500, "Error from API: The device could not be added: vhost-user requires shared memory")
        else:
            self.must_be_tap(body.get("tap", ""))
        taken = {d.get("id") for k in ("fs", "net", "disks") for d in vm.get(k, [])}
        dev_id = body.get("id") or next(f"{prefix}{i}" for i in range(64) if f"{prefix}{i}" not in taken)
        if dev_id in taken:
            raise ApiError(409, f"Error from API: The device could not be added: identifier {dev_id} is in use")
        body = dict(body, id=dev_id)
        if self.state == "Not started":
            vm.setdefault(key, []).append(body)
            return 204, None
        port = self.ports_used
        if port >= HOTPLUG_PORTS:
            raise ApiError(500, "Error from API: The device could not be added: no PCI slot is free")
        bus = f"hp{port}"
        if fs:
            self.qmp_cmd("chardev-add", {"id": f"c{dev_id}", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": body["socket"]}}, "server": False}}})
            self.qmp_cmd("device_add", {"driver": "vhost-user-fs-pci", "id": dev_id, "bus": bus, "chardev": f"c{dev_id}",
                                        "tag": body["tag"], "queue-size": body["queue_size"]})
        else:
            self.qmp_cmd("netdev_add", {"type": "tap", "id": f"n{dev_id}", "ifname": body["tap"], "script": "no",
                                        "downscript": "no"})
            dev = {"driver": "virtio-net-pci", "id": dev_id, "bus": bus, "netdev": f"n{dev_id}"}
            if body.get("mac"):
                dev["mac"] = body["mac"]
            if body.get("mtu"):
                dev["host_mtu"] = body["mtu"]
            self.qmp_cmd("device_add", dev)
        self.ports_used += 1
        vm.setdefault(key, []).append(body)
        # (The bus number is the stand-in's: port n's secondary bus.)
        return 200, {"id": dev_id, "bdf": f"0000:{port + 1:02x}:00.0"}

    # ---------------------------------------------------------------- the guest

    def boot_vm(self, vm, incoming=None):
        self.boot(kernel=vm["payload"]["kernel"], initrd=vm["payload"].get("initramfs"),
                  cmdline=vm["payload"].get("cmdline", ""), vcpus=vm.get("cpus", {}).get("boot_vcpus", 1),
                  mem_mib=vm.get("memory", {}).get("size", 512 << 20) >> 20,
                  drives=[(d["path"], d.get("readonly", False)) for d in vm.get("disks", [])],
                  nics=[(n["tap"], n.get("mac"), n.get("mtu")) for n in vm.get("net", [])],
                  vsock=vm.get("vsock", {}).get("socket"), balloon="balloon" in vm,
                  fs=[(f["tag"], f["socket"]) for f in vm.get("fs", [])],
                  shared=vm.get("memory", {}).get("shared", False), hotplug=True, incoming=incoming)

    def boot(self, kernel, initrd, cmdline, vcpus, mem_mib, drives, nics, vsock, balloon, fs=(), shared=False,
             hotplug=False, incoming=None):
        def dev(d):
            return d + "-pci"
        # QEMU's sockets, relative to our working directory (the VMM's,
        # which husk removes at delete): short paths, nothing left behind.
        os.makedirs("standin", exist_ok=True)
        agent = os.path.join("standin", "agent.sock")
        qmp = os.path.join("standin", "qmp.sock")
        words = ["husk.channel=serial" if w == "husk.channel=vsock" else w for w in cmdline.split() if w != "pci=off"]
        machine = "q35,sata=off,smbus=off"
        mem = []
        if fs or shared:  # virtio-fs: the guest's RAM shared with virtiofsd
            machine += ",memory-backend=ram"
            mem = ["-object", f"memory-backend-memfd,id=ram,size={mem_mib}M,share=on"]
        argv = ["qemu-system-x86_64", "-name", f"husk-standin-{self.flavour}", *mem,
                "-M", machine, "-accel", "tcg",
                "-m", str(mem_mib), "-smp", str(vcpus), "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
                "-kernel", kernel, "-append", " ".join(words),
                "-chardev", "file,id=con,path=/proc/self/fd/1", "-serial", "chardev:con",
                "-qmp", f"unix:{qmp},server=on,wait=off"]
        if initrd:
            argv += ["-initrd", initrd]
        for i, (path, ro) in enumerate(drives):
            argv += ["-drive", f"file={path},if=none,id=d{i},node-name=b{i},format=raw" + (",readonly=on" if ro else ""),
                     "-device", f"{dev('virtio-blk')},drive=d{i}"]
        for i, (tap, mac, mtu) in enumerate(nics):
            argv += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                     "-device", f"{dev('virtio-net')},netdev=n{i}" + (f",mac={mac}" if mac else "") +
                     (f",host_mtu={mtu}" if mtu else "")]
        if vsock:
            argv += ["-device", f"{dev('virtio-serial')},max_ports=2",
                     "-chardev", f"socket,id=agent,path={agent},server=on,wait=off",
                     "-device", "virtserialport,chardev=agent,name=husk.agent"]
        if balloon:
            argv += ["-device", f"{dev('virtio-balloon')},free-page-reporting=on"]
        for i, (tag, sock) in enumerate(fs):
            argv += ["-chardev", f"socket,id=fs{i},path={sock}", "-device", f"vhost-user-fs-pci,chardev=fs{i},tag={tag}"]
        if hotplug:  # Cloud Hypervisor's hot-plug: a root port per device
            for i in range(HOTPLUG_PORTS):
                argv += ["-device", f"pcie-root-port,id=hp{i},bus=pcie.0,chassis={i + 1}"]
        if incoming is not None:
            argv += ["-incoming", f"fd:{incoming}"]
        self.say("boot: " + " ".join(argv))
        libc = ctypes.CDLL(None, use_errno=True)
        # QEMU dies with us (the shim SIGKILLs the VMM it launched). The
        # parent-death signal follows the forking thread, so the main
        # thread, which lives as long as we do, forks it.
        self.qemu = on_main_thread(lambda: subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stderr=self.log, preexec_fn=lambda: libc.prctl(1, signal.SIGKILL),
            pass_fds=() if incoming is None else (incoming,)))
        self.qmp = self.connect(qmp)
        self.qmp_file = self.qmp.makefile("rw")
        self.qmp_file.readline()
        self.qmp_cmd("qmp_capabilities")
        self.state = "Running"
        if vsock:
            self.serve_vsock(vsock, agent)
        threading.Thread(target=self.reap, daemon=True).start()

    def connect(self, path):
        """A connection to one of QEMU's listening sockets. QEMU binds (the
        file appears) a moment before it listens: refused is retried too.
        Up to 30 s: a QEMU started cold on a loaded 2-core host took over
        the 5 s this waited before (CI, the first two tests of a phase)."""
        for _ in range(3000):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError):
                s.close()
            if self.qemu.poll() is not None:
                raise ApiError(400, f"the guest could not start (qemu exited {self.qemu.returncode})")
            time.sleep(0.01)
        raise ApiError(400, "the guest could not start")

    def qmp_cmd(self, cmd, args=None, fd=None):
        """One QMP command (with `fd` passed along, for getfd): its return."""
        msg = {"execute": cmd}
        if args is not None:
            msg["arguments"] = args
        data = (json.dumps(msg) + "\n").encode()
        try:
            if fd is None:
                self.qmp.sendall(data)
            else:
                socket.send_fds(self.qmp, [data], [fd])
        except OSError as e:
            raise ApiError(500, f"the guest's machine went away ({cmd}: {e})") from None
        while True:
            try:
                line = self.qmp_file.readline()
            except OSError:
                line = ""
            if not line:
                raise ApiError(500, f"the guest's machine went away ({cmd})")
            r = json.loads(line)
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise ApiError(400 if self.flavour == "firecracker" else 500,
                               f"{cmd}: {r['error'].get('desc', 'qmp error')}")

    def set_paused(self, paused):
        self.qmp_cmd("stop" if paused else "cont")
        self.state = "Paused" if paused else "Running"

    def reap(self):
        rc = self.qemu.wait()
        self.say(f"the guest's machine exited ({rc})")
        os._exit(0)

    def serve_vsock(self, uds, agent):
        """Host-initiated hybrid vsock: CONNECT <port>, OK <n>, bytes."""
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(uds)
        listener.listen(4)
        # (QEMU made its chardevs before QMP answered; conn() retries anyway.)
        used = [False]

        def conn(c):
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                b = c.recv(1)
                if not b:
                    return c.close()
                line += b
            parts = line.decode(errors="replace").split()
            if len(parts) != 2 or parts[0] != "CONNECT" or not parts[1].isdigit() or used[0]:
                return c.close()  # as a guest with no listener there
            used[0] = True
            q = self.connect(agent)
            c.sendall(b"OK 1073741824\n")
            pump(c, q)

        def accept():
            while True:
                c, _ = listener.accept()
                threading.Thread(target=conn, args=(c,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()


MAIN = queue.Queue()


def on_main_thread(fn):
    done = queue.Queue()
    MAIN.put((fn, done))
    ok, value = done.get()
    if not ok:
        raise value
    return value


def pump(a, b):
    socks = [a, b]
    while True:
        r, _, _ = select.select(socks, [], [])
        for s in r:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


def serve_api(standin):
    srv = socket.socket(socket.AF_UNIX)
    if os.path.exists(standin.api_sock):
        os.unlink(standin.api_sock)
    srv.bind(standin.api_sock)
    srv.listen(16)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve_conn, args=(standin, c), daemon=True).start()


def serve_conn(standin, c):
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            return
        try:
            method, path, _ = line.decode().split(" ", 2)
        except ValueError:
            return c.close()
        length = 0
        while True:
            h = f.readline().decode()
            if h in ("\r\n", "\n", ""):
                break
            name, _, value = h.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        raw = f.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            status, out = 400, {"fault_message": "body is not JSON"}
        else:
            try:
                status, out = standin.handle(method, path, body)
            except Exception as e:  # noqa: BLE001 - the VMM answers every request, as the real ones do
                status = e.status if isinstance(e, ApiError) else 500
                standin.say(f"{method} {path}: {status}: {e}")
                out = {"fault_message": str(e)} if standin.flavour == "firecracker" else str(e)
        data = b"" if out is None else (json.dumps(out) if isinstance(out, dict) else out).encode()
        reason = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  500: "Internal Server Error"}.get(status, "Error")
        head = f"HTTP/1.1 {status} {reason}\r\nServer: stand-in\r\n"
        if status != 204:
            head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
        c.sendall((head + "\r\n").encode() + data)


def main():
    args = sys.argv[1:]
    flavour = os.path.basename(sys.argv[0])
    if flavour not in ("firecracker", "cloud-hypervisor"):
        flavour = args.pop(0)
    api_sock, log_path = None, None
    i = 0
    while i < len(args):
        a = args[i]
        if a in ("--api-sock", "--log-path", "--id", "--level", "--api-socket"):
            v = args[i + 1]
            i += 2
            if a == "--api-sock":
                api_sock = v
            elif a == "--api-socket":
                api_sock = v[5:] if v.startswith("path=") else v
            elif a == "--log-path":
                log_path = v
            continue
        sys.exit(f"standin-{flavour}: unknown argument {a}")
    if not api_sock:
        sys.exit(f"standin-{flavour}: no API socket given")
    threading.Thread(target=serve_api, args=(StandIn(flavour, api_sock, log_path),), daemon=True).start()
    while True:
        fn, done = MAIN.get()
        try:
            done.put((True, fn()))
        except Exception as e:  # noqa: BLE001 - handed back to the caller
            done.put((False, e))


if __name__ == "__main__":
    main()
