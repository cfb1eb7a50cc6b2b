"""Memory goes back to the host: guest memory the container frees (the VM
has a virtio-balloon with free page reporting, so QEMU drops pages the
guest kernel reports free), and the VMM's copies of the boot images
(bench/ measures the footprint; these only check that the memory comes
back at all)."""
import pytest
import os

from conftest import jailed_vmm, new_id, wait_for


def vmm_rss_kib(husk, cid):
    with open(f"/proc/{jailed_vmm(husk, cid)}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


@pytest.mark.not_on("uml", reason="UML has no balloon")
def test_freed_guest_memory_returns_to_the_host(husk, bundle):
    script = ("dd if=/dev/zero of=/big/x bs=1M count=100 2>/dev/null; echo filled > /tmp/st; "
              "while [ ! -e /tmp/go ]; do sleep 0.2; done; rm /big/x; echo freed > /tmp/st; exec sleep 1000")

    def edit(c):
        c["mounts"].append({"destination": "/big", "type": "tmpfs", "source": "tmpfs", "options": ["size=150m"]})
    b = bundle(["sh", "-c", script], edit=edit)
    st = os.path.join(b, "rootfs", "tmp", "st")
    cid = new_id()
    husk("run", "-d", "-b", b, cid, check=True)
    wait_for(lambda: os.path.exists(st) and open(st).read() == "filled\n", "the guest to fill 100 MiB")
    full = vmm_rss_kib(husk, cid)
    open(os.path.join(b, "rootfs", "tmp", "go"), "w").close()
    wait_for(lambda: open(st).read() == "freed\n", "the guest to free it")
    # Without reporting, QEMU's RSS never shrinks; with it, most of the
    # 100 MiB leaves within seconds (2 MiB blocks, reported after ~2 s).
    wait_for(lambda: vmm_rss_kib(husk, cid) < full - 50 * 1024, "QEMU's RSS to drop by 50 MiB")
    husk("delete", "--force", cid, check=True)


def mapped_kib(pid, path):
    """(size, resident, resident and mapped by this process alone) in KiB
    of the process's mappings of `path`."""
    size = rss = private = 0
    mine = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                mine = len(fields) > 5 and fields[5] == path
            elif mine and fields[0] == "Size:":
                size += int(fields[1])
            elif mine and fields[0] == "Rss:":
                rss += int(fields[1])
            elif mine and fields[0] in ("Private_Clean:", "Private_Dirty:"):
                private += int(fields[1])
    return size, rss, private


@pytest.mark.not_on(("uml", "firecracker", "cloud-hypervisor"),
                    reason="UML is its own kernel; Firecracker and Cloud Hypervisor read the kernel into the guest, they do not map it")
def test_the_vmm_boots_the_elf_kernel_and_gives_its_pages_back(husk, bundle):
    # QEMU maps the PVH vmlinux (a bzImage would be read into its heap
    # instead) and the initrd, and would keep both resident for a reset
    # that -no-reboot never does: ~70 MiB a VM. The shim pages them out
    # once the agent has said hello.
    # A page another VM maps too (one that booted at the same time, in
    # parallel tests) cannot be reclaimed: what this VMM holds alone must.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    vmm = jailed_vmm(husk, cid)
    ksize, krss, kalone = mapped_kib(vmm, "/kernel")
    isize, irss, ialone = mapped_kib(vmm, "/initrd.img")
    assert ksize > 32 * 1024, f"QEMU does not map the kernel ELF: {ksize} KiB"
    assert isize > 1024, f"QEMU does not map the initrd: {isize} KiB"
    assert kalone + ialone < 2 * 1024, (f"boot images still held by this VMM alone: kernel {kalone} KiB "
                                        f"(of {krss} resident), initrd {ialone} KiB (of {irss})")
    husk("delete", "--force", cid, check=True)
