"""The guest image: reproducible, and only what the agent needs."""
import pytest
import hashlib
import os
import subprocess

from conftest import BUILD, ROOT

pytestmark = pytest.mark.not_on("uml", reason="checks the QEMU guest image's modules")


def build(tmp, name):
    k, i, x = tmp / f"{name}.vmlinuz", tmp / f"{name}.img", tmp / f"{name}.vmlinux"
    subprocess.run(["python3", os.path.join(ROOT, "rootfs-builder", "build-image.py"),
                    "--agent", os.path.join(BUILD, "guest-agent", "husk-agent"),
                    "--kernel-out", str(k), "--initrd-out", str(i), "--vmlinux-out", str(x)],
                   check=True, capture_output=True)
    return k, i, x


def digest(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_image_is_reproducible_and_minimal(tmp_path):
    k1, i1, x1 = build(tmp_path, "a")
    os.utime(os.path.join(BUILD, "guest-agent", "husk-agent"))  # mtimes must not leak in
    k2, i2, x2 = build(tmp_path, "b")
    assert digest(k1) == digest(k2)
    assert digest(i1) == digest(i2)
    assert digest(x1) == digest(x2)
    # vmlinux: the same kernel as an x86-64 ELF with the PVH entry note
    # (XEN_ELFNOTE_PHYS32_ENTRY, 18) that Firecracker and Cloud Hypervisor use.
    head = x1.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2 and int.from_bytes(head[18:20], "little") == 62
    notes = subprocess.run(["readelf", "-n", str(x1)], capture_output=True, text=True, check=True).stdout
    assert "Unknown note type: (0x00000012)" in notes or "XEN_ELFNOTE_PHYS32_ENTRY" in notes
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(i1, "rb"), capture_output=True,
                             check=True).stdout.decode().split()
    assert listing == sorted(listing)
    mods = [l for l in listing if l.endswith(".ko") and not l.startswith("lib/modules/uml/")]
    # virtio transports, console, virtio-fs (fuse) and 9p, balloon, vsock, virtio-net, the disk
    # rootfs (virtio-blk, ext4) and virtio-mem with their dependencies;
    # nothing else.
    assert set(os.path.basename(m)[:-3] for m in mods) == {
        "virtio_ring", "virtio", "virtio_mmio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
        "virtio_console", "9pnet", "9pnet_virtio", "netfs", "fscache", "9p", "vsock",
        "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "virtio_balloon",
        "failover", "net_failover", "virtio_net", "virtio_blk", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4",
        "virtio_mem", "fuse", "virtiofs"}
    # A UML guest's IPv6, from the host's user-mode-linux package (which
    # scripts/deps installs), loaded only by a UML guest with NICs.
    uml = sorted(l for l in listing if l.startswith("lib/modules/uml/") and l.endswith(".ko"))
    assert uml == ["lib/modules/uml/crc_ccitt.ko", "lib/modules/uml/ipv6.ko"]
    assert "init" in listing and not any(l.startswith("bin/") for l in listing)
    verbose = subprocess.run(["cpio", "-itv", "--quiet"], stdin=open(i1, "rb"), capture_output=True,
                             check=True).stdout.decode()
    assert "1970" in verbose.splitlines()[0] or "Jan  1" in verbose.splitlines()[0]
