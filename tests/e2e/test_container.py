"""What the workload sees inside the guest: root, mounts, user, cwd, env."""
import os
import subprocess

import pytest

from conftest import DISK_DRIVERS, DRIVER, new_id


def run_ok(husk, b, input=None):
    r = husk("run", "-b", b, new_id(), input=input)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_user_cwd_env_hostname(husk, bundle):
    def edit(c):
        c["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [10]}
        c["process"]["cwd"] = "/home/user/work"  # absent in the image: created, as runc does
        c["process"]["env"].append("GREETING=hi there")
        c["hostname"] = "guest-box"
    out = run_ok(husk, bundle(["sh", "-c", "id; pwd; echo \"$GREETING\"; hostname"], edit=edit))
    lines = out.splitlines()
    assert lines[0].startswith("uid=1000(user) gid=1000(user)")
    assert "10(wheel)" in lines[0]
    assert lines[1:] == ["/home/user/work", "hi there", "guest-box"]


def test_default_mounts_and_devices(husk, bundle):
    out = run_ok(husk, bundle(["sh", "-c", "cat /proc/self/mounts; ls /dev; echo x > /dev/null && echo devnull-ok"]))
    mounts = {(l.split()[1], l.split()[2]) for l in out.splitlines() if l.count(" ") >= 5}
    for want in [("/proc", "proc"), ("/dev", "tmpfs"), ("/dev/pts", "devpts"), ("/dev/shm", "tmpfs"),
                 ("/dev/mqueue", "mqueue"), ("/sys", "sysfs"), ("/sys/fs/cgroup", "cgroup2")]:
        assert want in mounts, out
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "ptmx", "fd", "stdin", "stdout", "stderr"):
        assert f"\n{dev}\n" in "\n" + out, dev
    assert "devnull-ok" in out


def test_pid_namespace_and_masked_paths(husk, bundle):
    out = run_ok(husk, bundle(["sh", "-c", "echo pid=$$; wc -c < /proc/kcore; "
                                             "touch /proc/sys/x 2>/dev/null || echo procsys-ro"]))
    assert "pid=1" in out
    assert out.splitlines()[1].strip() == "0"  # masked: reads empty
    assert "procsys-ro" in out


def test_readonly_root(husk, bundle):
    b = bundle(["sh", "-c", "touch /newfile 2>/dev/null && echo wrote || echo readonly; "
                            "touch /tmp/ok 2>/dev/null && echo tmp-writable || echo tmp-ro; echo hi > /dev/shm/x && echo shm-ok"],
               edit=lambda c: c["root"].update(readonly=True))
    out = run_ok(husk, b)
    assert "readonly" in out and "wrote" not in out
    assert "tmp-ro" in out  # /tmp is part of the read-only root here
    assert "shm-ok" in out  # mounts on top stay writable
    assert not os.path.exists(os.path.join(b, "rootfs", "newfile"))


@pytest.mark.not_on(DISK_DRIVERS, reason="the rootfs is a copy on a disk: the test looks at what the container wrote through the host's view")
def test_bind_mounts_dir_file_and_readonly(husk, bundle, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "from-host").write_text("host data\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("ro data\n")
    single = tmp_path / "single.conf"
    single.write_text("one file\n")

    def edit(c):
        c["mounts"] += [
            {"destination": "/data", "type": "bind", "source": str(shared), "options": ["rbind", "rw"]},
            {"destination": "/etc/single.conf", "type": "bind", "source": str(single), "options": ["bind", "ro"]},
            {"destination": "/ro", "type": "bind", "source": str(ro), "options": ["rbind", "ro"]},
        ]
    script = ("cat /data/from-host; echo from-guest > /data/new; cat /etc/single.conf; cat /ro/f; "
              "touch /ro/nope 2>/dev/null && echo ro-broken || echo ro-enforced")
    out = run_ok(husk, bundle(["sh", "-c", script], edit=edit))
    assert out.splitlines() == ["host data", "one file", "ro data", "ro-enforced"]
    assert (shared / "new").read_text() == "from-guest\n"
    assert not (ro / "nope").exists()


@pytest.mark.not_on(DISK_DRIVERS, reason="the rootfs is a copy on a disk: the test looks at what the container wrote through the host's view")
def test_rbind_ro_leaves_submounts_writable_and_rro_does_not(husk, bundle, tmp_path):
    # As the kernel's bind (and runc): "ro" on an rbind is the top mount's;
    # "rro" (mount_setattr's recursive read-only) takes the submounts too.
    src = tmp_path / "vol"
    (src / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src / "sub")], check=True)
    try:
        def edit(c):
            c["mounts"] += [
                {"destination": "/ro", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
                {"destination": "/rro", "type": "bind", "source": str(src), "options": ["rbind", "rro"]},
            ]
        script = ("for d in /ro /rro; do touch $d/top 2>/dev/null && echo $d-top-rw || echo $d-top-ro; "
                  "touch $d/sub/f$(basename $d) 2>/dev/null && echo $d-sub-rw || echo $d-sub-ro; done")
        out = run_ok(husk, bundle(["sh", "-c", script], edit=edit))
        assert out.splitlines() == ["/ro-top-ro", "/ro-sub-rw", "/rro-top-ro", "/rro-sub-ro"]
        assert sorted(os.listdir(src / "sub")) == ["fro"]  # written through to the host's submount
    finally:
        subprocess.run(["umount", str(src / "sub")], check=False)


def test_umask(husk, bundle):
    b = bundle(["sh", "-c", "umask"], edit=lambda c: c["process"]["user"].update(umask=0o077))
    assert run_ok(husk, b).strip() == "0077"


@pytest.mark.not_on(DISK_DRIVERS, reason="the rootfs is a copy on a disk: the test looks at what the container wrote through the host's view")
def test_symlinked_mount_destination_stays_inside_the_root(husk, bundle, tmp_path):
    # /escape in the image points at the guest's own /run: the mount must
    # land inside the container root, not on the agent's /run.
    def edit(c):
        c["mounts"].append({"destination": "/escape/inner", "type": "tmpfs", "source": "tmpfs"})
    b = bundle(["sh", "-c", "grep -c ' /run/inner ' /proc/self/mounts || true"], edit=edit)
    os.symlink("/run", os.path.join(b, "rootfs", "escape"))
    out = run_ok(husk, b)
    assert out.strip() == "1"
    assert os.path.isdir(os.path.join(b, "rootfs", "run", "inner"))


def test_vm_size_follows_the_spec(husk, bundle):
    def edit(c):
        c["linux"]["resources"] = {"memory": {"limit": 256 * 1024 * 1024}, "cpu": {"quota": 200000, "period": 100000}}
    out = run_ok(husk, bundle(["sh", "-c", "grep MemTotal /proc/meminfo; nproc"], edit=edit)).split()
    mem_kib, cpus = int(out[1]), int(out[3])
    # 256 MiB limit + 64 MiB overhead, less what the guest kernel reserves.
    assert 256 * 1024 < mem_kib <= 320 * 1024, mem_kib
    # Debian's UML kernel is built for one CPU (CONFIG_NR_CPUS=1).
    assert cpus == (1 if DRIVER == "uml" else min(2, os.cpu_count()))
    out = run_ok(husk, bundle(["sh", "-c", "grep MemTotal /proc/meminfo; nproc"])).split()
    assert 128 * 1024 < int(out[1]) <= 192 * 1024 and int(out[3]) == 1


@pytest.mark.not_on(DISK_DRIVERS, reason="the rootfs is a copy on a disk: the test looks at what the container wrote through the host's view")
def test_relative_symlink_with_dotdot_cannot_climb_out(husk, bundle):
    # /a/link -> ../../../../run/deep: resolved inside the root, never above it.
    def edit(c):
        c["mounts"].append({"destination": "/a/link/m", "type": "tmpfs", "source": "tmpfs"})
    b = bundle(["sh", "-c", "grep -c ' /run/deep/m ' /proc/self/mounts || true"], edit=edit)
    os.makedirs(os.path.join(b, "rootfs", "a"))
    os.symlink("../../../../run/deep", os.path.join(b, "rootfs", "a", "link"))
    assert run_ok(husk, b).strip() == "1"
    assert os.path.isdir(os.path.join(b, "rootfs", "run", "deep", "m"))


def test_dotdot_in_mount_destination_is_refused(husk, bundle):
    b = bundle(["true"], edit=lambda c: c["mounts"].append({"destination": "/x/../../y", "type": "tmpfs"}))
    r = husk("run", "-b", b, new_id())
    assert r.returncode != 0 and b'contains ".."' in r.stderr


def test_network_namespace_holds_the_shim_and_vmm(husk, bundle, tmp_path):
    # A new network namespace in the spec: the shim (state.pid) and QEMU
    # live in one of their own, where hooks such as docker's libnetwork
    # put the container's interfaces. A path: they join it.
    def ns_of(pid):
        return os.readlink(f"/proc/{pid}/ns/net")
    cid = new_id()
    husk("create", "-b", bundle(["true"]), cid, check=True)
    mine = ns_of(os.getpid())
    shim = husk.state(cid)["pid"]
    assert ns_of(shim) != mine
    husk("delete", "--force", cid, check=True)

    name = "husk-" + new_id()
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        def edit(c):
            for n in c["linux"]["namespaces"]:
                if n["type"] == "network":
                    n["path"] = f"/run/netns/{name}"
        cid = new_id()
        husk("create", "-b", bundle(["true"], edit=edit), cid, check=True)
        assert os.stat(f"/proc/{husk.state(cid)['pid']}/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino
        husk("delete", "--force", cid, check=True)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def test_tmpcopyup_and_loopback(husk, bundle):
    # podman --read-only mounts tmpfs with runc's "tmpcopyup": the tmpfs
    # starts with what the image had there. The container's loopback is up.
    def edit(c):
        c["root"]["readonly"] = True
        c["mounts"].append({"destination": "/etc", "type": "tmpfs", "source": "tmpfs",
                            "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]})
    b = bundle(["sh", "-c", "grep -c : /etc/passwd; ls -ln /etc/group | cut -c1-10; touch /etc/new && echo etc-writable; "
                            "touch /x 2>/dev/null || echo root-ro; ip addr show lo | grep -o 'inet 127.0.0.1'"], edit=edit)
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\n")[:5] == ["2", "-rw-r--r--", "etc-writable", "root-ro", "inet 127.0.0.1"], r.stdout
    assert not os.path.exists(os.path.join(b, "rootfs", "etc", "new"))  # written to the tmpfs only
