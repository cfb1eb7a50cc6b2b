"""The rootfs on a disk (org.husk.rootfs=disk; always so for Firecracker and
Cloud Hypervisor, which cannot share a directory): a copy of the share in
an ext4 image, mounted by the agent. Run here on the default driver."""
import os

from conftest import new_id


def with_disk(c):
    c.setdefault("annotations", {})["org.husk.rootfs"] = "disk"


def test_the_container_runs_on_an_ext4_copy_and_the_bundle_stays_untouched(husk, bundle, tmp_path):
    vol = tmp_path / "motd"
    vol.write_text("from the host\n")

    def edit(c):
        with_disk(c)
        c["mounts"].append({"destination": "/etc/motd", "type": "bind", "source": str(vol), "options": ["ro", "bind"]})

    b = bundle(["sh", "-c", "grep ' / ' /proc/mounts; cat /etc/motd; echo written > /new; cat /new; ls /bin/busybox"],
               edit=edit)
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    root_line = out.splitlines()[0]
    assert " ext4 " in root_line, out
    assert "from the host" in out and "written" in out and "/bin/busybox" in out
    # Writes stay in the VM's copy.
    assert not os.path.exists(os.path.join(b, "rootfs", "new"))


def test_the_image_lives_in_the_state_dir_and_goes_with_delete(husk, bundle):
    cid = new_id()
    b = bundle(["sleep", "30"], edit=with_disk)
    husk("create", "-b", b, cid, check=True)
    img = os.path.join(husk.root, cid, "share.img")
    assert os.path.getsize(img) > 256 << 20
    assert os.stat(img).st_blocks * 512 < os.path.getsize(img)  # sparse
    husk("delete", "--force", cid, check=True)
    assert not os.path.exists(os.path.join(husk.root, cid))


def test_an_unknown_rootfs_mode_is_refused(husk, bundle):
    b = bundle(["true"], edit=lambda c: c.setdefault("annotations", {}).update({"org.husk.rootfs": "nfs"}))
    r = husk("run", "-b", b, new_id())
    assert r.returncode != 0
    assert 'annotation org.husk.rootfs: expected "shared" or "disk", got "nfs"' in r.stderr.decode()
