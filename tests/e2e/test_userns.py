"""User namespaces with uid/gid mappings, in the guest: the workload is
root in its namespace and an unprivileged id on the (shared) rootfs."""
import pytest
import os
import time

from conftest import new_id

HOST_BASE = 100000


def userns(c):
    c["linux"]["namespaces"].append({"type": "user"})
    c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": HOST_BASE, "size": 65536}]
    c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": HOST_BASE, "size": 65536}]


def chown_tree(path, uid, gid):
    os.chown(path, uid, gid, follow_symlinks=False)
    for d, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(d, n), uid, gid, follow_symlinks=False)


SCRIPT = """
cat /proc/self/uid_map /proc/self/gid_map
echo id=$(id -u):$(id -g)
touch /tmp/by-root
hostname inside && echo hostname=$(hostname)
mkdir -p /tmp/m && mount -t tmpfs t /tmp/m && echo tmpfs-mounted
mknod /tmp/m/null c 1 3 2>/dev/null || echo mknod-denied
echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo sysctl-denied
cat /proc/self/status | grep CapEff
sleep 1000
"""


@pytest.mark.not_on("uml", reason='hostfs keeps host ownership: a mapped id on the rootfs is not honoured')
def test_user_namespace_maps_ids_and_keeps_namespace_root_powers(husk, bundle):
    cid = new_id()
    b = bundle(["sh", "-c", SCRIPT], edit=userns)
    rootfs = os.path.join(b, "rootfs")
    chown_tree(rootfs, HOST_BASE, HOST_BASE)  # as runc needs: the image owned by the mapped root
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    out_path = os.path.join(b, "out")
    with open(out_path, "wb") as out:
        husk("run", "-d", "-b", b, cid, check=True, stdout=out)
    deadline = time.time() + 120
    while "CapEff" not in open(out_path).read():
        assert time.time() < deadline, open(out_path).read()
        time.sleep(0.2)
    out = open(out_path).read()
    lines = out.split("\n")
    assert lines[0].split() == ["0", "100000", "65536"] and lines[1].split() == ["0", "100000", "65536"], out
    assert "id=0:0" in out, out
    st = os.stat(os.path.join(rootfs, "tmp", "by-root"))
    assert (st.st_uid, st.st_gid) == (HOST_BASE, HOST_BASE), out
    assert "hostname=inside" in out and "tmpfs-mounted" in out, out
    assert "mknod-denied" in out and "sysctl-denied" in out, out
    # Root of its namespace keeps the spec's capabilities there.
    capeff = int(out.split("CapEff:")[1].split()[0], 16)
    assert capeff & (1 << 21), out  # CAP_SYS_ADMIN: the base config limits no capabilities

    # exec joins the same user namespace; a non-root user maps too.
    r = husk("exec", cid, "cat", "/proc/self/uid_map", check=True)
    assert r.stdout.split() == [b"0", b"100000", b"65536"]
    husk("exec", "--user", "1000:1000", cid, "touch", "/tmp/by-user", check=True)
    st = os.stat(os.path.join(rootfs, "tmp", "by-user"))
    assert (st.st_uid, st.st_gid) == (HOST_BASE + 1000, HOST_BASE + 1000)
    # The guest's hostname stayed the guest's: the container's uts is its own.
    assert husk("exec", cid, "hostname", check=True).stdout.strip() == b"inside"
    husk("delete", "--force", cid, check=True)


def test_user_namespace_config_errors(husk, bundle):
    def no_maps(c):
        c["linux"]["namespaces"].append({"type": "user"})

    def maps_without_ns(c):
        c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 1}]

    def no_root(c):
        userns(c)
        c["linux"]["uidMappings"] = [{"containerID": 1, "hostID": 1000, "size": 1}]

    def join_path(c):
        c["linux"]["namespaces"][0]["path"] = "/proc/1/ns/pid"
    for edit, msg in [(no_maps, b"linux.uidMappings: required with a user namespace"),
                      (maps_without_ns, b"linux.uidMappings: given, but linux.namespaces has no user namespace"),
                      (no_root, b"linux.uidMappings: must map the container's id 0"),
                      (join_path, b"linux.namespaces[0].path: /proc/1/ns/pid is not a namespace of a running husk container")]:
        r = husk("create", "-b", bundle(["true"], edit=edit), new_id())
        assert r.returncode != 0 and msg in r.stderr, (msg, r.stderr)
