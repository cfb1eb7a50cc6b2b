"""The shared filesystem, as a workload sees it: a real Debian rootfs (an
overlay, as podman and docker mount one) and a volume bind-mounted from the
host, over virtio-fs (the default) and over 9p (the fallback), must keep the
semantics programs rely on. Each check is one a 9p or FUSE share is known to
get wrong: mmap of a shared file, unlink/rename of an open file, flock and
fcntl locks (a blocking F_SETLKW too), xattrs, hard links, O_DIRECT, sparse
files, ownership and modes as the host has them, chown reflected on the
host, and host-side changes seen in the guest while it runs.
"""
import json
import os
import subprocess
import time

import pytest

from conftest import DISK_DRIVERS, DRIVER, KVM_SHAPE, ROOT, base_config, new_id, wait_for

pytestmark = pytest.mark.not_on(DISK_DRIVERS, reason="no shared filesystem: the rootfs is a copy on a disk (README)")

# The filesystems to check on this driver: QEMU has both (an annotation
# picks); UML has hostfs alone.
SHARES = (["9p"] if KVM_SHAPE else ["virtiofs", "9p"]) if DRIVER == "qemu" else ["default"]
# microvm (the KVM configuration) has no virtio-fs: hypervisors/qemu/qemu.cpp.
NO_VIRTIOFS = pytest.mark.skipif(KVM_SHAPE, reason="qemu's microvm: no virtio-fs over virtio-mmio (README)")

# Runs in the container (Debian's python3), as uid 0 with the default
# capabilities; writes what it saw to /vol/result.json.
CHECKS = r'''
import errno, fcntl, json, mmap, os, subprocess, sys, time
V = "/vol"
r = {}
def child(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()

p = V + "/mm"
with open(p, "wb") as f:
    f.write(b"\0" * 8192)
with open(p, "r+b") as f:
    m = mmap.mmap(f.fileno(), 8192)
    m[4096:4101] = b"hello"
    m.flush()
    m.close()
with open(p, "rb") as f:
    r["mmap"] = f.read()[4096:4101].decode()
# Another process maps the same file: it sees the first one's stores.
with open(p, "r+b") as f:
    m = mmap.mmap(f.fileno(), 8192)
    m[0:3] = b"abc"
    r["mmap_shared"] = child("import mmap; f = open('%s', 'rb'); print(mmap.mmap(f.fileno(), 8192, prot=mmap.PROT_READ)[0:3].decode())" % p)
    m.close()

p = V + "/unlinked"
f = open(p, "w+")
f.write("still here")
f.flush()
os.unlink(p)
f.seek(0)
r["unlink_open"] = [f.read(), os.path.exists(p), os.fstat(f.fileno()).st_nlink]
f.close()

a, b = V + "/old", V + "/new"
with open(a, "w") as f:
    f.write("old")
with open(b, "w") as f:
    f.write("new")
f = open(a)
os.rename(b, a)
r["rename_open"] = [f.read(), open(a).read(), os.path.exists(b)]
f.close()

p = V + "/lock"
open(p, "w").close()
f = open(p)
fcntl.flock(f, fcntl.LOCK_EX)
probe = "import fcntl\nf = open('%s')\ntry:\n    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got')\nexcept BlockingIOError:\n    print('busy')" % p
r["flock"] = [child(probe)]
fcntl.flock(f, fcntl.LOCK_UN)
r["flock"].append(child(probe))
f.close()
f = open(p, "r+")
fcntl.lockf(f, fcntl.LOCK_EX)
probe = "import fcntl\nf = open('%s', 'r+')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB); print('got')\nexcept OSError:\n    print('busy')" % p
r["setlk"] = child(probe)
# A blocking F_SETLKW: the waiter says it is about to block, and takes the
# lock only once the holder lets go.
w = subprocess.Popen([sys.executable, "-u", "-c", "import fcntl, time\nf = open('%s', 'r+')\nprint('trying')\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint(time.time())" % p],
                     stdout=subprocess.PIPE, text=True)
w.stdout.readline()
time.sleep(1)
released = time.time()
fcntl.lockf(f, fcntl.LOCK_UN)
r["setlkw_after_release"] = float(w.communicate(timeout=60)[0]) >= released
f.close()

p = V + "/xattr"
open(p, "w").close()
try:
    os.setxattr(p, "user.husk", b"v1")
    r["xattr"] = [os.getxattr(p, "user.husk").decode(), "user.husk" in os.listxattr(p)]
except OSError as e:
    r["xattr"] = errno.errorcode[e.errno]

with open(V + "/h1", "w") as f:
    f.write("x")
os.link(V + "/h1", V + "/h2")
s1, s2 = os.stat(V + "/h1"), os.stat(V + "/h2")
r["hardlink"] = [s1.st_nlink, s1.st_ino == s2.st_ino]

try:
    fd = os.open(V + "/direct", os.O_CREAT | os.O_RDWR | os.O_DIRECT, 0o644)
    buf = mmap.mmap(-1, 4096)
    buf.write(b"d" * 4096)
    os.write(fd, buf)
    back = mmap.mmap(-1, 4096)
    os.preadv(fd, [back], 0)
    r["o_direct"] = back[:4].decode()
    os.close(fd)
except OSError as e:
    r["o_direct"] = errno.errorcode[e.errno]

fd = os.open(V + "/sparse", os.O_CREAT | os.O_RDWR, 0o644)
os.lseek(fd, 64 << 20, os.SEEK_SET)
os.write(fd, b"e")
os.fsync(fd)
st = os.fstat(fd)
r["sparse"] = [st.st_size, st.st_blocks * 512 < (1 << 20)]
r["seek_data"] = os.lseek(fd, 0, os.SEEK_DATA)
os.close(fd)

st = os.stat(V + "/hostmade")
r["host_owner"] = [st.st_uid, st.st_gid, st.st_mode & 0o7777]
p = V + "/chowned"
open(p, "w").close()
os.chown(p, 4321, 8765)
os.chmod(p, 0o4751)
pid = os.fork()
if pid == 0:
    try:
        os.setgroups([])
        os.setgid(1000)
        os.setuid(1000)
        open(V + "/u/byuser", "w").close()
        os._exit(0)
    except OSError:
        os._exit(1)
r["byuser"] = os.waitpid(pid, 0)[1]
with open("/work/in-rootfs", "w") as f:
    f.write("made in the guest")

# The host changes the volume while we run: a new file, new contents, a removal.
open(V + "/ready", "w").close()
def seen(pred):
    t = time.time()
    while time.time() - t < 30:
        if pred():
            return round(time.time() - t, 1)
        time.sleep(0.1)
    return None
def content(path, want):
    try:
        with open(path) as f:
            return f.read() == want
    except OSError:
        return False
r["host_new"] = seen(lambda: content(V + "/fromhost", "v1"))
open(V + "/step2", "w").close()
r["host_changed"] = seen(lambda: content(V + "/fromhost", "v2 longer"))
open(V + "/step3", "w").close()
r["host_removed"] = seen(lambda: not os.path.exists(V + "/fromhost"))
with open(V + "/result.json", "w") as f:
    json.dump(r, f)
'''


@pytest.fixture
def overlay(tmp_path, debian):
    """The Debian rootfs as an overlay's lower layer (what podman mounts)."""
    upper, work, merged = (tmp_path / d for d in ("upper", "ovl-work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={debian},upperdir={upper},workdir={work}",
                    str(merged)], check=True)
    yield merged, upper
    subprocess.run(["umount", "-l", str(merged)], check=False)


def debian_bundle(tmp_path, rootfs, args, share, volume):
    b = tmp_path / "bundle"
    b.mkdir()
    c = base_config(args)
    c["root"] = {"path": str(rootfs), "readonly": False}
    c["process"]["env"] = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"]
    c["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]})
    if share != "default":
        c.setdefault("annotations", {})["org.husk.share"] = share
    (b / "config.json").write_text(json.dumps(c))
    return str(b)


@pytest.mark.parametrize("share", SHARES)
def test_a_workload_keeps_file_semantics_on_the_share(husk, tmp_path, overlay, share):
    merged, upper = overlay
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "checks.py").write_text(CHECKS)
    (vol / "u").mkdir()
    os.chown(vol / "u", 1000, 1000)
    made = vol / "hostmade"
    made.write_text("by the host")
    os.chown(made, 1234, 5678)
    os.chmod(made, 0o640)
    cid = new_id()
    b = debian_bundle(tmp_path, merged, ["python3", "/vol/checks.py"], share, vol)
    err = open(tmp_path / "stderr", "wb")
    p = subprocess.Popen(husk.cmd("run", "-b", b, cid, glob=("--debug",)),
                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        wait_for(lambda: (vol / "ready").exists() or p.poll() is not None, "the container's checks", timeout=200)
        (vol / "fromhost").write_text("v1")
        wait_for(lambda: (vol / "step2").exists() or p.poll() is not None, "the guest to see a new host file", timeout=60)
        (vol / "fromhost").write_text("v2 longer")
        wait_for(lambda: (vol / "step3").exists() or p.poll() is not None, "the guest to see new contents", timeout=60)
        (vol / "fromhost").unlink()
        assert p.wait(timeout=120) == 0, (tmp_path / "stderr").read_text(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    log = (tmp_path / "stderr").read_text(errors="replace")
    if share != "default":
        assert f"share: {'virtio-fs' if share == 'virtiofs' else '9p'} (annotation org.husk.share says {share})" in log
    r = json.loads((vol / "result.json").read_text())

    assert r["mmap"] == "hello" and r["mmap_shared"] == "abc"
    assert (vol / "mm").read_bytes()[4096:4101] == b"hello"  # and the host has what was stored through the map
    assert r["unlink_open"][:2] == ["still here", False]
    assert r["unlink_open"][2] == (1 if DRIVER == "uml" else 0)  # hostfs keeps the inode's old count
    assert r["rename_open"] == ["old", "new", False]
    assert r["flock"] == ["busy", "got"]
    assert r["setlk"] == "busy"
    assert r["setlkw_after_release"]  # F_SETLKW blocked until the holder let go
    if DRIVER == "uml":
        assert r["xattr"] in ("ENOTSUP", "EOPNOTSUPP")  # UML's hostfs has no xattrs (README)
    else:
        assert r["xattr"] == ["v1", True]
        assert os.getxattr(vol / "xattr", "user.husk") == b"v1"
    assert r["hardlink"] == [2, True]
    assert os.stat(vol / "h1").st_ino == os.stat(vol / "h2").st_ino
    assert r["o_direct"] == ("EINVAL" if DRIVER == "uml" else "dddd")  # hostfs has no O_DIRECT
    assert r["sparse"] == [(64 << 20) + 1, True]
    # SEEK_DATA finds the data past the hole over virtio-fs (FUSE_LSEEK);
    # 9p and hostfs have no lseek of their own: the whole file is data there.
    assert r["seek_data"] == (64 << 20 if share == "virtiofs" else 0)
    assert os.stat(vol / "sparse").st_blocks * 512 < (1 << 20)  # a hole on the host too
    # Ownership and modes: what the host set, the guest sees; what the
    # guest sets (root's chown, a setuid bit, a file made by uid 1000), the
    # host has, as under runc.
    assert r["host_owner"] == [1234, 5678, 0o640]
    st = os.stat(vol / "chowned")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4321, 8765, 0o4751)
    assert r["byuser"] == 0
    st = os.stat(vol / "u" / "byuser")
    # hostfs creates every file as the UML process's user (README).
    assert (st.st_uid, st.st_gid) == ((0, 0) if DRIVER == "uml" else (1000, 1000))
    # The rootfs is the overlay: what the container wrote is in its upper layer.
    assert (upper / "work" / "in-rootfs").read_text() == "made in the guest"
    # Host changes reach the running guest (a volume the client updates).
    print("host changes seen after", {k: r[k] for k in ("host_new", "host_changed", "host_removed")})
    for k in ("host_new", "host_changed", "host_removed"):
        assert r[k] is not None and r[k] < 10, (k, r[k])


@pytest.mark.not_on("uml", reason="no virtio-fs: hostfs (README)")
@NO_VIRTIOFS
def test_a_virtiofsd_that_fails_fails_the_create_and_leaves_nothing(husk, bundle, tmp_path):
    # A daemon that dies at once (a broken install): the VMM cannot connect
    # to it, the create fails saying so, with the daemon's words in the
    # message, and the leak check (no virtiofsd, no VMM, no mount, no state)
    # holds after it.
    broken = tmp_path / "virtiofsd"
    broken.write_text("#!/bin/sh\necho 'virtiofsd: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = dict(os.environ, HUSK_VIRTIOFSD=str(broken))
    r = husk("run", "-b", bundle(["true"]), new_id(), env=env)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "vhost-user" in err or "virtiofsd" in err, err
    # 9p needs no daemon: the same bundle runs with the annotation.
    b = bundle(["true"], edit=lambda c: c.setdefault("annotations", {}).update({"org.husk.share": "9p"}))
    assert husk("run", "-b", b, new_id(), env=env).returncode == 0
