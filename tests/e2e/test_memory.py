"""Guest memory the container frees goes back to the host: the VM has a
virtio-balloon with free page reporting, so QEMU drops pages the guest
kernel reports free (bench/ measures the footprint; this only checks that
the memory comes back at all)."""
import pytest
import os

from conftest import jailed_vmm, new_id, wait_for

pytestmark = pytest.mark.not_on("uml", reason='UML has no balloon')


def vmm_rss_kib(husk, cid):
    with open(f"/proc/{jailed_vmm(husk, cid)}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


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
