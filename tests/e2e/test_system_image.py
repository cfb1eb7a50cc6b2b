"""System images (issue 27): an image that carries its own kernel boots it
(org.husk.kernel), with husk's initramfs and, where husk's modules are for
another release, the image's own modules; its init runs as the
container's process, SIGTERM asks it to power off, and a power-off is exit
status 0.

The images here are made without a kernel package: husk's own vmlinuz is
put in the image (the same release as husk's modules), or a copy of it
whose boot header names another release, with a /lib/modules/<release>
tree made of husk's modules. test_debian_system_image boots a real Debian
12 image (debootstrap: systemd-sysv and linux-image-amd64) under systemd.
"""
import gzip
import json
import os
import shutil
import stat
import subprocess
import time

import pytest

from conftest import BUILD, DRIVER, KVM_SHAPE, ROOT, assert_no_leaks, wait_for
from husktest import header_release, systemd_config

VMLINUZ = os.path.join(BUILD, "rootfs-builder", "vmlinuz")
VMLINUX = os.path.join(BUILD, "rootfs-builder", "vmlinux")  # husk's own kernel: an ELF with a PVH entry
INITRD = os.path.join(BUILD, "rootfs-builder", "initramfs.img")

qemu_only = pytest.mark.not_on(("uml", "firecracker", "cloud-hypervisor"),
                               reason="boots a bzImage from the image: QEMU only (test_other_drivers_refuse_it)")


def cpio_entries(data):
    """name -> bytes of each entry of a newc cpio (the first archive of `data`)."""
    out, pos = {}, 0
    while data[pos:pos + 6] == b"070701":
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        at = (pos + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out, (at + 3) & ~3
        out[name] = data[at:at + size]
        pos = (at + size + 3) & ~3
    return out, pos


def cpio_newc(entries):
    """A newc cpio of (name, mode, data) entries, as mkinitramfs writes one."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate(list(entries) + [("TRAILER!!!", 0, b"")], start=1):
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out += b"070701" + b"".join(b"%08x" % f for f in fields) + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def image_initrd(corrupt=False):
    """An initrd laid out as Debian's initramfs-tools writes one: an
    uncompressed early archive, then a compressed main one with an /init of
    its own and a merged /usr (lib -> usr/lib)."""
    d, f, lnk = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o755, stat.S_IFLNK | 0o777
    early = cpio_newc([("kernel", d, b""), ("kernel/x86", d, b""), ("kernel/x86/microcode", d, b""),
                       ("kernel/x86/microcode/.enuineIntel.align.0123456789abc", stat.S_IFREG | 0o644, b"")])
    main = gzip.compress(cpio_newc([("usr", d, b""), ("usr/lib", d, b""), ("lib", lnk, b"usr/lib"),
                                    ("usr/lib/firmware", d, b""), ("usr/lib/firmware/image.bin", f, b"firmware"),
                                    ("init", f, b"#!/bin/sh\necho the image's own init ran\n")]))
    if corrupt:
        main = main[:10] + bytes(64)  # gzip's magic, then no deflate stream
    return early + main


def husk_modules():
    with open(INITRD, "rb") as f:
        entries, _ = cpio_entries(f.read())
    return {n[len("lib/modules/"):]: d for n, d in entries.items()
            if n.startswith("lib/modules/") and n.endswith(".ko") and "/" not in n[len("lib/modules/"):]}


def renamed_kernel(dest, release):
    """husk's vmlinuz, its boot header naming `release` (of the same length)."""
    data = bytearray(open(VMLINUZ, "rb").read())
    old = header_release(VMLINUZ)
    assert len(release) == len(old)
    at = int.from_bytes(data[0x20E:0x210], "little") + 0x200
    assert data[at:at + len(old)] == old.encode()
    data[at:at + len(old)] = release.encode()
    with open(dest, "wb") as f:
        f.write(data)


def module_tree(rootfs, release, leave_out=()):
    """/lib/modules/<release> as depmod writes it, of husk's modules (no
    dependencies listed: husk's order files have them in order)."""
    base = os.path.join(rootfs, "lib", "modules", release)
    os.makedirs(os.path.join(base, "kernel"))
    dep = []
    for name, data in sorted(husk_modules().items()):
        with open(os.path.join(base, "kernel", name), "wb") as f:
            f.write(data)
        if name[:-3] not in leave_out:
            dep.append(f"kernel/{name}:\n")
    with open(os.path.join(base, "modules.dep"), "w") as f:
        f.writelines(dep)
    open(os.path.join(base, "modules.builtin"), "w").close()


def busybox_system(bundle, tmp_path, kernel_at="/boot/vmlinuz", kernel=None, annotations=None, more=None):
    """A busybox system image: busybox's init (/sbin/init) with an inittab,
    and a kernel in /boot."""
    def edit(c):
        c["annotations"] = annotations if annotations is not None else {"org.husk.kernel": kernel_at}
        if more:
            more(c)
    b = bundle(["/sbin/init"], edit=edit)
    rootfs = os.path.join(b, "rootfs")
    os.makedirs(os.path.join(rootfs, "sbin"))
    os.symlink("../bin/busybox", os.path.join(rootfs, "sbin", "init"))
    os.makedirs(os.path.join(rootfs, "boot"))
    shutil.copy(kernel or VMLINUZ, os.path.join(rootfs, "boot", "vmlinuz"))
    with open(os.path.join(rootfs, "etc", "inittab"), "w") as f:
        f.write("::sysinit:/bin/echo busybox init: up\n"
                "::respawn:/bin/sleep 100000\n"
                "::shutdown:/bin/echo busybox init: shutting down\n")
    return b


@qemu_only
def test_busybox_init_boots_the_images_kernel(husk, bundle, tmp_path):
    b = busybox_system(bundle, tmp_path)
    out = tmp_path / "out"
    with open(out, "wb") as o:
        r = husk("run", "-d", "--bundle", b, "sb1", stdout=o, timeout=240)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: b"busybox init: up" in out.read_bytes(), "busybox init's sysinit line")
    st = os.path.join(husk.root, "sb1")
    # The kernel the VM booted is the image's, copied out of the rootfs;
    # husk's modules are for its release, so husk's initramfs is as it is.
    with open(os.path.join(st, "image-kernel"), "rb") as f, open(VMLINUZ, "rb") as g:
        assert f.read() == g.read()
    assert not os.path.exists(os.path.join(st, "image-initrd.img"))
    assert husk("exec", "sb1", "uname", "-r", check=True).stdout.decode().strip() == header_release(VMLINUZ)
    # The image's init is the container's PID 1; exec and ps work beside it.
    assert husk("exec", "sb1", "cat", "/proc/1/comm", check=True).stdout == b"init\n"
    ps = husk("ps", "sb1", check=True).stdout.decode()
    assert "sleep" in ps, ps
    # SIGTERM asks busybox's init to power off (SIGUSR2): it runs its
    # shutdown lines, and its power-off (reboot(2) in its PID namespace)
    # is a clean exit.
    husk("kill", "sb1", "TERM", check=True)
    wait_for(lambda: husk.state("sb1")["status"] == "stopped", "the power-off", timeout=60)
    assert b"busybox init: shutting down" in out.read_bytes()
    assert husk.state_file("sb1").get("exit_code") == 0, husk.state_file("sb1")
    husk("delete", "sb1", check=True)


@qemu_only
def test_the_images_kernel_panics_and_the_container_ends_255(husk, bundle, tmp_path):
    """A panic of the image's kernel (sysrq "c", from an exec) ends the VM
    (panic=-1, QEMU's -no-reboot): the container is stopped with 255, as
    the VM's unexpected end, and the console keeps the panic."""
    def sysrq(c):
        for k in ("readonlyPaths", "maskedPaths"):
            c["linux"][k] = [p for p in c["linux"].get(k, []) if "sysrq" not in p]
    b = busybox_system(bundle, tmp_path, more=sysrq)
    out = tmp_path / "out"
    with open(out, "wb") as o:
        r = husk("run", "-d", "--bundle", b, "panic1", stdout=o, timeout=240)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: b"busybox init: up" in out.read_bytes(), "busybox init's sysinit line")
    husk("exec", "-d", "panic1", "sh", "-c", "echo c > /proc/sysrq-trigger")
    wait_for(lambda: husk.state("panic1")["status"] == "stopped", "the panicked system image to be reported stopped", 120)
    assert husk.state_file("panic1").get("exit_code") == 255, husk.state_file("panic1")
    with open(os.path.join(husk.root, "panic1", "console.log"), errors="replace") as f:
        assert "sysrq" in f.read().lower()
    husk("delete", "panic1", check=True)


@pytest.mark.not_on(("uml",), reason="UML boots UML kernels (test_other_drivers_refuse_it)")
def test_an_elf_vmlinux_boots_through_its_pvh_entry(husk, bundle, tmp_path):
    """An image whose kernel is an ELF vmlinux (as Firecracker's kernel
    images are): booted through its PVH entry by QEMU, Firecracker and
    Cloud Hypervisor alike, its release read from its banner."""
    b = busybox_system(bundle, tmp_path, kernel=VMLINUX)
    out = tmp_path / "out"
    with open(out, "wb") as o:
        r = husk("run", "-d", "--bundle", b, "elf1", stdout=o, timeout=240, glob=("--debug",))
    assert r.returncode == 0, r.stderr
    assert f"Linux {header_release(VMLINUZ)}, with husk's modules" in r.stderr.decode(), r.stderr.decode()[-3000:]
    wait_for(lambda: b"busybox init: up" in out.read_bytes(), "busybox init's sysinit line")
    with open(os.path.join(husk.root, "elf1", "image-kernel"), "rb") as f, open(VMLINUX, "rb") as g:
        assert f.read() == g.read()
    assert husk("exec", "elf1", "uname", "-r", check=True).stdout.decode().strip() == header_release(VMLINUZ)
    husk("kill", "elf1", "TERM", check=True)
    wait_for(lambda: husk.state("elf1")["status"] == "stopped", "the power-off", timeout=60)
    assert husk.state_file("elf1").get("exit_code") == 0, husk.state_file("elf1")
    husk("delete", "elf1", check=True)


@qemu_only
def test_image_kernel_of_another_release_boots_with_the_images_modules(husk, bundle, tmp_path):
    release = header_release(VMLINUZ)
    other = release[:-5] + "husk1"  # "6.1.0-57-amd64" -> "6.1.0-57-husk1"
    kernel = tmp_path / "vmlinuz-other"
    renamed_kernel(kernel, other)
    b = busybox_system(bundle, tmp_path, kernel=str(kernel))
    module_tree(os.path.join(b, "rootfs"), other)
    out = tmp_path / "out"
    with open(out, "wb") as o:
        r = husk("run", "-d", "--bundle", b, "sb2", stdout=o, timeout=240)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: b"busybox init: up" in out.read_bytes(), "busybox init's sysinit line")
    # husk's initramfs, and after it an archive of the image's modules and
    # order files rewritten for them.
    with open(os.path.join(husk.root, "sb2", "image-initrd.img"), "rb") as f:
        data = f.read()
    with open(INITRD, "rb") as f:
        husks = f.read()
    assert data.startswith(husks)
    appended, _ = cpio_entries(data[len(husks):])
    assert "lib/modules/order" in appended and "lib/modules/virtio_console.ko" in appended, sorted(appended)
    assert appended["lib/modules/virtio_console.ko"] == husk_modules()["virtio_console.ko"]
    assert husk("exec", "sb2", "true").returncode == 0
    husk("kill", "sb2", "KILL", check=True)
    wait_for(lambda: husk.state("sb2")["status"] == "stopped", "the kill")
    husk("delete", "sb2", check=True)


@qemu_only
def test_the_console_as_the_containers_stdio(husk, bundle, tmp_path):
    """org.husk.stdio=console: with process.terminal false, the init's
    stdio is a terminal in the guest, also its /dev/console: busybox's init
    runs a shell there, which the container's stdin reaches."""
    b = busybox_system(bundle, tmp_path, annotations={"org.husk.kernel": "/boot/vmlinuz", "org.husk.stdio": "console"})
    with open(os.path.join(b, "rootfs", "etc", "inittab"), "w") as f:
        f.write("::sysinit:/bin/echo busybox init: up\n"
                "::respawn:-/bin/sh\n"
                "::shutdown:/bin/echo busybox init: shutting down\n")
    out = tmp_path / "out"
    r_in, w_in = os.pipe()
    try:
        with open(out, "wb") as o:
            r = husk("run", "-d", "--bundle", b, "sb5", stdin=r_in, stdout=o, timeout=240)
        os.close(r_in)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: b"busybox init: up" in out.read_bytes(), "busybox init's sysinit line")
        os.write(w_in, b"tty; stat -c console=%t /dev/console; echo answer-$((6*7))\n")
        wait_for(lambda: b"answer-42" in out.read_bytes(), "the console shell's answer")
        seen = out.read_bytes()
        # A terminal: it echoed the line, and ends lines with CR LF.
        assert b"answer-$((6*7))" in seen and b"answer-42\r\n" in seen, seen
        assert b"console=88" in seen, seen  # a pty of the container's devpts
    finally:
        os.close(w_in)
    husk("kill", "sb5", "TERM", check=True)
    wait_for(lambda: husk.state("sb5")["status"] == "stopped", "the power-off", timeout=60)
    assert b"busybox init: shutting down" in out.read_bytes()
    assert husk.state_file("sb5").get("exit_code") == 0, husk.state_file("sb5")
    husk("delete", "sb5", check=True)
    # A value husk does not know is a clear error.
    bad = busybox_system(bundle, tmp_path, annotations={"org.husk.kernel": "/boot/vmlinuz", "org.husk.stdio": "serial"})
    r = husk("create", "--bundle", bad, "sb6", timeout=60)
    assert r.returncode != 0
    assert "annotation org.husk.stdio: expected \"console\" or \"init\", got \"serial\"" in r.stderr.decode(), r.stderr
    assert_no_leaks(husk.root)


def test_husks_annotation_option_under_the_bundles_own(husk, bundle, tmp_path):
    """husk --annotation KEY=VALUE (a docker runtime entry's runtimeArgs):
    as if config.json had it, the bundle's own annotations winning; a
    malformed one is a clear error."""
    b = bundle(["sh", "-c", "tty; true"])
    out = tmp_path / "out"
    with open(out, "wb") as o:
        r = husk("run", "--bundle", b, "ann1", glob=("--annotation", "org.husk.stdio=console"), stdout=o)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == b"/dev/pts/0\r\n", out.read_bytes()
    own = bundle(["sh", "-c", "tty; true"], edit=lambda c: c.update(annotations={"org.husk.stdio": "init"}))
    r = husk("run", "-d", "--bundle", own, "ann2", glob=("--annotation", "org.husk.stdio=console",
                                                         "--annotation", "example.com/x=y"))
    assert r.returncode == 0, r.stderr
    st = json.loads(husk("state", "ann2", check=True).stdout)
    assert st["annotations"] == {"org.husk.stdio": "init", "example.com/x": "y"}, st
    wait_for(lambda: husk.state("ann2")["status"] == "stopped", "its exit")
    husk("delete", "ann2", check=True)
    r = husk("create", "--bundle", b, "ann3", glob=("--annotation", "org.husk.stdio"))
    assert r.returncode != 0
    assert "--annotation org.husk.stdio: expected KEY=VALUE" in r.stderr.decode(), r.stderr
    assert_no_leaks(husk.root)


@qemu_only
def test_the_images_initrd_is_stacked_under_husks(husk, bundle, tmp_path):
    """org.husk.initrd: the image's initrd is unpacked first (its early
    archive stays the first), husk's initramfs after it: husk's /init (the
    agent) replaces the image's, and the image's modules come from its
    /lib/modules as without an initrd."""
    release = header_release(VMLINUZ)
    other = release[:-5] + "husk1"
    kernel = tmp_path / "vmlinuz-other"
    renamed_kernel(kernel, other)
    b = busybox_system(bundle, tmp_path, kernel=str(kernel),
                       annotations={"org.husk.kernel": "/boot/vmlinuz", "org.husk.initrd": "/boot/initrd.img"})
    rootfs = os.path.join(b, "rootfs")
    module_tree(rootfs, other)
    theirs = image_initrd()
    with open(os.path.join(rootfs, "boot", "initrd.img"), "wb") as f:
        f.write(theirs)
    out = tmp_path / "out"
    with open(out, "wb") as o:
        r = husk("--debug", "run", "-d", "--bundle", b, "sb3", stdout=o, timeout=240)
    assert r.returncode == 0, r.stderr
    assert "husk's initramfs stacked on the image's initrd (a newc cpio" in r.stderr.decode(), r.stderr.decode()
    wait_for(lambda: b"busybox init: up" in out.read_bytes(), "busybox init's sysinit line")
    with open(os.path.join(husk.root, "sb3", "image-initrd.img"), "rb") as f:
        data = f.read()
    with open(INITRD, "rb") as f:
        husks = f.read()
    at = len(theirs) + (-len(theirs) % 4)
    assert data[:len(theirs)] == theirs and data[len(theirs):at] == bytes(at - len(theirs))
    assert data[at:at + len(husks)] == husks
    appended, _ = cpio_entries(data[at + len(husks):])
    assert "lib/modules/virtio_console.ko" in appended, sorted(appended)
    # The image's /init did not run (the guest came up, the agent answers).
    assert b"the image's own init ran" not in out.read_bytes()
    # (The kernel is husk's with its header renamed: it says its own release.)
    assert husk("exec", "sb3", "uname", "-r", check=True).stdout.decode().strip() == release
    husk("kill", "sb3", "TERM", check=True)
    wait_for(lambda: husk.state("sb3")["status"] == "stopped", "the power-off", timeout=60)
    assert husk.state_file("sb3").get("exit_code") == 0, husk.state_file("sb3")
    husk("delete", "sb3", check=True)

    # An initrd the kernel cannot unpack: the VM does not boot, and the
    # error has the console's tail; nothing is left.
    with open(os.path.join(rootfs, "boot", "initrd.img"), "wb") as f:
        f.write(image_initrd(corrupt=True))
    r = husk("create", "--bundle", b, "sb4", timeout=240)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "console tail" in err and "Initramfs unpacking failed" in err, err
    assert_no_leaks(husk.root)


@qemu_only
@pytest.mark.parametrize("case", ["missing", "not-a-kernel", "elf", "escape", "no-modules", "lacks-virtio", "relative",
                                  "initrd-alone", "initrd-not-initramfs"])
def test_a_kernel_husk_cannot_boot_is_a_clear_error(husk, bundle, tmp_path, case):
    release = header_release(VMLINUZ)
    other = release[:-5] + "husk1"
    kernel, kernel_at, annotations = None, "/boot/vmlinuz", None
    if case == "missing":
        kernel_at, want = "/boot/vmlinuz-none", "org.husk.kernel /boot/vmlinuz-none: No such file or directory"
    elif case == "not-a-kernel":
        kernel_at, want = "/etc/passwd", "org.husk.kernel /etc/passwd: not a Linux bzImage"
    elif case == "elf":
        kernel_at, want = "/bin/busybox", "org.husk.kernel /bin/busybox: an ELF kernel without a PVH entry note (CONFIG_PVH)"
    elif case == "escape":
        # A symlink that would leave the rootfs is resolved inside it: the
        # host's file it names is not reached.
        kernel_at, want = "/boot/escape", "org.husk.kernel /boot/escape: No such file or directory"
    elif case in ("no-modules", "lacks-virtio"):
        kernel = tmp_path / "vmlinuz-other"
        renamed_kernel(kernel, other)
        want = (f"is Linux {other}: its modules are not in the image" if case == "no-modules"
                else f"the image's kernel {other} has no module virtio_console and does not build it in")
    elif case == "relative":
        annotations, want = {"org.husk.kernel": "boot/vmlinuz"}, "expected an absolute path inside the rootfs"
    elif case == "initrd-alone":
        annotations, want = {"org.husk.initrd": "/boot/vmlinuz"}, \
            "org.husk.initrd: an initrd is booted with the image's kernel (org.husk.kernel), which is not given"
    else:
        annotations, want = {"org.husk.kernel": "/boot/vmlinuz", "org.husk.initrd": "/etc/passwd"}, \
            "org.husk.initrd /etc/passwd: not an initramfs"
    b = busybox_system(bundle, tmp_path, kernel_at=kernel_at, kernel=str(kernel) if kernel else None,
                       annotations=annotations)
    if case == "escape":
        os.symlink("../../../../../../../../.." + os.path.abspath(VMLINUZ), os.path.join(b, "rootfs", "boot", "escape"))
    if case == "lacks-virtio":
        module_tree(os.path.join(b, "rootfs"), other, leave_out=("virtio_console",))
    r = husk("create", "--bundle", b, "bad1", timeout=120)
    assert r.returncode != 0
    assert want in r.stderr.decode(), r.stderr.decode()
    assert_no_leaks(husk.root)


@pytest.mark.skipif(DRIVER != "qemu" or KVM_SHAPE, reason="once, in the main QEMU phase")
def test_a_pod_member_cannot_bring_a_kernel(husk, bundle, tmp_path):
    cri = "io.kubernetes.cri."
    sb = bundle(["sleep", "100000"], edit=lambda c: c.update(annotations={cri + "container-type": "sandbox",
                                                                         cri + "sandbox-id": "pod1"}))
    husk("run", "-d", "--bundle", sb, "pod1", check=True)
    b = busybox_system(bundle, tmp_path, annotations={"org.husk.kernel": "/boot/vmlinuz", cri + "container-type": "container",
                                                      cri + "sandbox-id": "pod1"})
    r = husk("create", "--bundle", b, "member1", timeout=60)
    assert r.returncode != 0
    assert "a container that joins a pod's VM cannot boot a kernel of its own" in r.stderr.decode(), r.stderr.decode()
    assert not os.path.exists(os.path.join(husk.root, "member1"))
    husk("delete", "--force", "pod1", check=True)


@pytest.mark.skipif(DRIVER == "qemu", reason="QEMU boots an image's kernel: the tests above")
def test_other_drivers_refuse_it(husk, bundle, tmp_path):
    b = busybox_system(bundle, tmp_path)
    r = husk("create", "--bundle", b, "other1", timeout=60)
    assert r.returncode != 0
    assert f"hypervisor {DRIVER} cannot boot an image's kernel (a bzImage): QEMU can" in r.stderr.decode(), r.stderr.decode()
    assert_no_leaks(husk.root)
    if DRIVER == "uml":
        b = busybox_system(bundle, tmp_path, kernel=VMLINUX)
        r = husk("create", "--bundle", b, "other2", timeout=60)
        assert r.returncode != 0
        assert ("hypervisor uml cannot boot an image's kernel (an ELF vmlinux): QEMU, Firecracker and Cloud Hypervisor can"
                in r.stderr.decode()), r.stderr.decode()
        assert_no_leaks(husk.root)


@pytest.fixture(scope="session")
def debian_kernel():
    """Debian 12's linux-image-amd64 as debootstrap installs it, unpacked
    (scripts/debian-kernel): its vmlinuz and /lib/modules/<release>."""
    p = subprocess.run([os.path.join(ROOT, "scripts", "debian-kernel")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"scripts/debian-kernel failed: {p.stderr}"
    return p.stdout.strip()


@qemu_only
def test_debian_system_image_boots_systemd(husk, tmp_path, debian, debian_kernel):
    """A Debian 12 image with systemd-sysv and linux-image-amd64 (the
    kernel package's files over the debootstrapped rootfs, as layers):
    its kernel boots with its own modules when husk's are for another
    release, systemd reaches multi-user.target, exec works beside it, and
    SIGTERM powers it off with exit status 0."""
    upper, work, merged = (tmp_path / d for d in ("upper", "ovl-work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={debian_kernel}:{debian},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        b = tmp_path / "bundle"
        b.mkdir()
        c = json.loads(open(os.path.join(ROOT, "tests", "e2e", "base-config.json")).read())
        c["process"]["args"] = ["/sbin/init"]
        systemd_config(c, merged)
        # The guest's console as the container's stdio: systemd's boot
        # status and its console getty (a container's) are on it.
        c["annotations"]["org.husk.stdio"] = "console"
        (b / "config.json").write_text(json.dumps(c))
        release = header_release(os.path.join(debian_kernel, "vmlinuz"))
        out = tmp_path / "console"
        t0 = time.monotonic()
        with open(out, "wb") as o:
            r = husk("run", "-d", "--bundle", str(b), "deb1", glob=("--debug",), stdout=o, timeout=240)
        assert r.returncode == 0, r.stderr.decode(errors="replace")
        log = r.stderr.decode(errors="replace")
        if release != header_release(VMLINUZ):
            assert f"Linux {release}, with the image's modules" in log, log[-3000:]
        # systemd's own answer, once it has started everything it will
        # ("offline", or nothing, until its manager and bus answer at all;
        # then "initializing", "starting").
        settled = ("running", "degraded", "maintenance", "stopping")
        answers = []
        def answer():
            answers.append(husk("exec", "deb1", "systemctl", "is-system-running").stdout.decode().strip())
            return answers[-1] in settled
        wait_for(answer, "systemd to finish starting", timeout=240, interval=1)
        state = answers[-1]
        booted = time.monotonic() - t0
        assert state in ("running", "degraded"), state
        failed = husk("exec", "deb1", "systemctl", "--failed", "--no-legend", "--plain").stdout.decode()
        assert state == "running", f"systemd is {state}: failed units: {failed}"
        assert husk("exec", "deb1", "systemctl", "is-active", "multi-user.target").stdout.decode().strip() == "active"
        assert husk("exec", "deb1", "uname", "-r", check=True).stdout.decode().strip() == release
        assert husk("exec", "deb1", "cat", "/proc/1/comm", check=True).stdout == b"systemd\n"
        wait_for(lambda: b"login: " in out.read_bytes(), "the console's getty", timeout=60)
        console = out.read_bytes()
        assert b"Welcome to \x1b[1mDebian GNU/Linux 12 (bookworm)" in console or b"Welcome to Debian GNU/Linux 12" in console, \
            console[-2000:]
        mem = husk("exec", "deb1", "sh", "-c", "grep -E '^(MemTotal|MemAvailable)' /proc/meminfo").stdout.decode()
        print(f"debian system image: systemd running {booted:.1f} s after husk run began; {' '.join(mem.split())}")
        # podman stop sends SIGTERM (or systemd mode's SIGRTMIN+3): the
        # image's systemd powers off, and that is exit status 0.
        husk("kill", "deb1", "TERM", check=True)
        wait_for(lambda: husk.state("deb1")["status"] == "stopped", "systemd's power-off", timeout=120)
        assert husk.state_file("deb1").get("exit_code") == 0, husk.state_file("deb1")
        husk("delete", "deb1", check=True)
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)
