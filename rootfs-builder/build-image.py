#!/usr/bin/env python3
"""Build the guest image: vmlinuz + initramfs.img (+ vmlinux).

The kernel comes from Debian's linux-image-amd64 package (downloaded with
`apt-get download` and unpacked here, never installed on the host). The
cloud kernel cannot be used: it has no 9p at all. The initramfs holds the
static husk-agent as /init and just the modules it loads, in dependency
order. Output is reproducible: sorted entries, fixed mtimes and owners.
vmlinux is the same kernel uncompressed (an ELF with a PVH entry): what
QEMU, Firecracker and Cloud Hypervisor boot, directly at its PVH entry
(under TCG the bzImage's own xz decompression takes ~4 s of a boot).
vmlinuz stays as Debian ships it, for HUSK_KERNEL and comparisons.
"""
import argparse
import glob
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

# What the agent needs; dependencies are added from each module's modinfo.
MODULES = ["virtio_mmio", "virtio_pci", "virtio_console", "virtio_balloon"]
NINEP_MODULES = ["9pnet_virtio", "9p"]  # the share over 9p (the default before virtio-fs, and its fallback)
VIRTIOFS_MODULES = ["virtiofs"]  # the share over virtio-fs (husk.share=virtiofs); needs fuse
VSOCK_MODULES = ["vmw_vsock_virtio_transport"]
# Loaded only when the VM has NICs (husk.net=1).
NET_MODULES = ["virtio_net"]
# Loaded only when the rootfs comes on a disk (husk.share=disk): every VMM
# without a shared filesystem (Firecracker, Cloud Hypervisor), or on request.
DISK_MODULES = ["virtio_blk", "crc32c_generic", "ext4"]  # ext4 asks the crypto API for crc32c
MEM_MODULES = ["virtio_mem"]  # memory a pod's VM is given as its containers arrive (husk.mem=1)
KERNEL_META = "linux-image-amd64"
# A UML guest runs the host's user-mode-linux kernel, which has IPv6 as a
# module: its modules go in lib/modules/uml, loaded only by a UML guest
# with NICs. Left out (UML guests get IPv4 only) where the package is not
# installed when the image is built.
UML_MODULES_DIR = "/usr/lib/uml/modules"
UML_NET_MODULES = ["ipv6"]


def log(msg):
    print(f"build-image: {msg}", file=sys.stderr)


def find_deb(cache):
    env = os.environ.get("HUSK_KERNEL_DEB")
    if env:
        return env
    os.makedirs(cache, exist_ok=True)
    # Which kernel the metapackage points at today.
    dep = subprocess.run(["apt-cache", "depends", KERNEL_META], capture_output=True, text=True)
    m = re.search(r"Depends: (linux-image-[0-9][^\s]*)", dep.stdout)
    if not m:
        sys.exit(f"build-image: cannot resolve {KERNEL_META} (run apt-get update): {dep.stderr.strip()}")
    pkg = m.group(1)
    found = sorted(glob.glob(os.path.join(cache, f"{pkg}_*.deb")))
    if found:
        return found[-1]
    log(f"downloading {pkg}")
    r = subprocess.run(["apt-get", "download", pkg], cwd=cache, capture_output=True, text=True)
    found = sorted(glob.glob(os.path.join(cache, f"{pkg}_*.deb")))
    if not found:
        sys.exit(f"build-image: apt-get download {pkg} failed: {r.stderr.strip()}")
    return found[-1]


def deb_data(deb):
    """The data tarball of a .deb, read with the stdlib (ar + tar)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            sys.exit(f"build-image: {deb} is not a .deb")
        while True:
            hdr = f.read(60)
            if len(hdr) < 60:
                break
            name = hdr[:16].decode().strip().rstrip("/")
            size = int(hdr[48:58])
            body = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                if name.endswith(".xz"):
                    body = lzma.decompress(body)
                elif name.endswith(".zst"):
                    body = subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout
                return tarfile.open(fileobj=io.BytesIO(body))
    sys.exit(f"build-image: no data.tar in {deb}")


def modinfo_depends(data):
    m = re.search(rb"depends=([^\0]*)\0", data)
    if not m or not m.group(1):
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def norm(name):
    return name.replace("-", "_")


def resolve(wanted, index, builtin=frozenset()):
    order, seen = [], set()

    def visit(n):
        n = norm(n)
        if n in seen:
            return
        seen.add(n)
        if n not in index:
            if n in builtin:
                return
            sys.exit(f"build-image: module {n} not in the kernel package")
        for d in modinfo_depends(index[n][1]):
            visit(d)
        order.append(n)

    for w in wanted:
        visit(w)
    return order


def uml_modules():
    """(order, index) of UML_NET_MODULES from the installed UML kernel, debug info stripped."""
    dirs = sorted(glob.glob(os.path.join(UML_MODULES_DIR, "*", "modules.builtin")))
    if not dirs:
        log(f"no {UML_MODULES_DIR}: UML guests get no IPv6")
        return [], {}
    top = os.path.dirname(dirs[-1])
    with open(dirs[-1]) as f:
        builtin = {norm(os.path.basename(l.strip()).split(".ko")[0]) for l in f if l.strip()}
    index = {}
    for path in glob.glob(os.path.join(top, "kernel", "**", "*.ko"), recursive=True):
        with open(path, "rb") as f:
            index[norm(os.path.basename(path)[:-3])] = (os.path.basename(path), f.read())
    order = resolve(UML_NET_MODULES, index, builtin)
    with tempfile.TemporaryDirectory() as tmp:
        for n in order:
            src, dst = os.path.join(tmp, "in.ko"), os.path.join(tmp, "out.ko")
            with open(src, "wb") as f:
                f.write(index[n][1])
            if subprocess.run(["objcopy", "--strip-debug", src, dst], capture_output=True).returncode == 0:
                with open(dst, "rb") as f:
                    index[n] = (index[n][0], f.read())
    return order, index


def extract_vmlinux(bzimage):
    """The ELF inside a bzImage: its payload is the first compressed stream
    (xz, gzip or zstd) that unpacks to an ELF."""
    import zlib
    magics = [(b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd")]
    for magic, kind in magics:
        off = bzimage.find(magic)
        while off >= 0:
            try:
                if kind == "xz":
                    out = lzma.LZMADecompressor().decompress(bzimage[off:])
                elif kind == "gzip":
                    out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bzimage[off:])
                else:
                    out = subprocess.run(["zstd", "-dc"], input=bzimage[off:], capture_output=True).stdout
            except (lzma.LZMAError, zlib.error, OSError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            off = bzimage.find(magic, off + 1)
    sys.exit("build-image: no ELF kernel found inside vmlinuz")


def cpio_newc(entries):
    """entries: sorted list of (path, mode, data_or_None). Reproducible."""
    out = bytearray()
    ino = 1

    def add(name, mode, data, nlink):
        nonlocal ino
        name_b = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name_b), 0))
        ino += 1
        out.extend(hdr.encode())
        out.extend(name_b)
        out.extend(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
        out.extend(data)
        out.extend(b"\0" * ((4 - len(data) % 4) % 4))

    for path, mode, data in entries:
        add(path, mode, data or b"", 2 if mode & 0o040000 else 1)
    add("TRAILER!!!", 0, b"", 1)
    return bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--kernel-out", required=True)
    ap.add_argument("--initrd-out", required=True)
    ap.add_argument("--vmlinux-out", required=True)
    ap.add_argument("--cache", default=os.environ.get("HUSK_CACHE", os.path.expanduser("~/.cache/husk")))
    a = ap.parse_args()

    deb = find_deb(a.cache)
    log(f"unpacking {os.path.basename(deb)} (the guest's kernel and modules)")
    tar = deb_data(deb)
    vmlinuz, index, builtin = None, {}, set()
    for m in tar.getmembers():
        if not m.isfile():
            continue
        base = os.path.basename(m.name)
        if re.match(r"^\./boot/vmlinuz-", m.name) or re.match(r"^boot/vmlinuz-", m.name):
            vmlinuz = tar.extractfile(m).read()
        elif "/kernel/" in m.name and (base.endswith(".ko") or base.endswith(".ko.xz")):
            name = norm(base.split(".ko")[0])
            data = tar.extractfile(m).read()
            if base.endswith(".xz"):
                data = lzma.decompress(data)
            index[name] = (base, data)
        elif base == "modules.builtin":
            builtin = {norm(os.path.basename(l.strip()).split(".ko")[0])
                       for l in tar.extractfile(m).read().decode().splitlines() if l.strip()}
    if vmlinuz is None:
        sys.exit(f"build-image: no vmlinuz in {deb}")

    base_mods = resolve(MODULES, index)
    ninep_mods = [n for n in resolve(NINEP_MODULES, index) if n not in base_mods]
    virtiofs_mods = [n for n in resolve(VIRTIOFS_MODULES, index, builtin) if n not in base_mods]
    vsock_mods = [n for n in resolve(VSOCK_MODULES, index) if n not in base_mods]
    net_mods = [n for n in resolve(NET_MODULES, index) if n not in base_mods]
    disk_mods = [n for n in resolve(DISK_MODULES, index, builtin) if n not in base_mods]
    mem_mods = [n for n in resolve(MEM_MODULES, index, builtin) if n not in base_mods]
    uml_net_mods, uml_index = uml_modules()
    with open(a.agent, "rb") as f:
        agent = f.read()

    entries = [
        ("dev", 0o040755, None),
        ("init", 0o100755, agent),
        ("lib", 0o040755, None),
        ("lib/modules", 0o040755, None),
        ("lib/modules/order", 0o100644, "".join(f"{n}.ko\n" for n in base_mods).encode()),
        ("lib/modules/order.9p", 0o100644, "".join(f"{n}.ko\n" for n in ninep_mods).encode()),
        ("lib/modules/order.virtiofs", 0o100644, "".join(f"{n}.ko\n" for n in virtiofs_mods).encode()),
        ("lib/modules/order.vsock", 0o100644, "".join(f"{n}.ko\n" for n in vsock_mods).encode()),
        ("lib/modules/order.net", 0o100644, "".join(f"{n}.ko\n" for n in net_mods).encode()),
        ("lib/modules/order.disk", 0o100644, "".join(f"{n}.ko\n" for n in disk_mods).encode()),
        ("lib/modules/order.mem", 0o100644, "".join(f"{n}.ko\n" for n in mem_mods).encode()),
        ("lib/modules/uml", 0o040755, None),
        ("lib/modules/uml/order.net", 0o100644, "".join(f"uml/{n}.ko\n" for n in uml_net_mods).encode()),
        ("proc", 0o040755, None),
        ("sys", 0o040755, None),
    ]
    for n in sorted(set(base_mods + ninep_mods + virtiofs_mods + vsock_mods + net_mods + disk_mods + mem_mods)):
        entries.append((f"lib/modules/{n}.ko", 0o100644, index[n][1]))
    for n in uml_net_mods:
        entries.append((f"lib/modules/uml/{n}.ko", 0o100644, uml_index[n][1]))
    entries.sort(key=lambda e: e[0])

    log(f"writing the guest image: vmlinuz, vmlinux (its PVH ELF), initramfs.img ({len(entries)} entries)")
    tmp_k, tmp_i, tmp_x = a.kernel_out + ".tmp", a.initrd_out + ".tmp", a.vmlinux_out + ".tmp"
    # Written through to disk before the rename: a whole file or the old
    # one after a crash, and clean pages, which the shim can return to the
    # host once a VM has booted (dirty ones would wait for writeback).
    for path, data in ((tmp_k, vmlinuz), (tmp_x, extract_vmlinux(vmlinuz)), (tmp_i, cpio_newc(entries))):
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp_k, a.kernel_out)
    os.replace(tmp_i, a.initrd_out)
    os.replace(tmp_x, a.vmlinux_out)
    log(f"{os.path.basename(deb)}: modules {' '.join(base_mods)} (+9p: {' '.join(ninep_mods)}; +virtiofs: {' '.join(virtiofs_mods)}; +vsock: {' '.join(vsock_mods)}; +net: {' '.join(net_mods)}; +disk: {' '.join(disk_mods)}; UML +net: {' '.join(uml_net_mods)})")


if __name__ == "__main__":
    main()
