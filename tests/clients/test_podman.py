"""podman with husk as its OCI runtime: `podman --runtime PATH` and a
containers.conf runtime entry, driving the real podman (conmon calls
husk create/start/exec/kill/pause/resume/delete)."""
import json
import os
import time

import pytest

from conftest import (HUSK, WEB, assert_nothing_left, check_published_web, have, http_get, in_tty, processes_mentioning, run,
                      wait_for)
from husktest import header_release

IMAGE = "localhost/husk-test-busybox:latest"

pytestmark = pytest.mark.skipif(not have("podman"), reason="podman is not installed (scripts/deps installs it)")


@pytest.fixture(scope="module")
def image(rootfs_tar):
    run(["podman", "import", rootfs_tar, IMAGE])
    yield IMAGE
    run(["podman", "rmi", "-f", IMAGE], check=False)


@pytest.fixture
def podman(image):
    names = []

    def p(*args, check=False, input=None, timeout=300, runtime=True):
        cmd = ["podman"] + (["--runtime", HUSK] if runtime else []) + list(args)
        if args and args[0] == "run" and "--name" in args:
            names.append(args[args.index("--name") + 1])
        return run(cmd, check=check, input=input, timeout=timeout)
    yield p
    for n in names:
        run(["podman", "rm", "-f", "-t", "0", n], check=False)
    assert_nothing_left()


def test_run_output_exit_code_and_stdin(podman, image):
    r = podman("run", "--rm", image, "echo", "hello from a VM")
    assert r.returncode == 0 and r.stdout == b"hello from a VM\n", r.stderr
    r = podman("run", "--rm", image, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert r.returncode == 7 and r.stdout == b"out\n" and b"err\n" in r.stderr
    r = podman("run", "--rm", "-i", image, "sh", "-c", "wc -c; cat /proc/1/cmdline | tr '\\0' ' '",
               input=b"x" * 100000)
    assert r.returncode == 0 and r.stdout.split(b"\n")[0].strip() == b"100000", r.stdout[:200]
    # The workload really is in a VM: its own kernel, not the host's.
    r = podman("run", "--rm", image, "sh", "-c", "cat /proc/cmdline")
    assert b"husk.channel=" in r.stdout, r.stdout


def test_process_options_volumes_and_read_only(podman, image, tmp_path):
    (tmp_path / "f").write_text("from the host\n")
    os.chmod(tmp_path, 0o755)  # readable, not writable, by uid 1000
    r = podman("run", "--rm", "--user", "1000:1000", "--env", "FOO=bar", "--workdir", "/tmp",
               "-v", f"{tmp_path}:/data", image, "sh", "-c",
               "id -u; echo $FOO; pwd; cat /data/f; echo back > /data/g 2>/dev/null || echo denied")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\n")[:5] == ["1000", "bar", "/tmp", "from the host", "denied"], r.stdout
    os.chmod(tmp_path, 0o777)
    r = podman("run", "--rm", "-v", f"{tmp_path}:/data", image, "sh", "-c", "echo back > /data/g")
    assert r.returncode == 0 and (tmp_path / "g").read_text() == "back\n"
    # --read-only: the root is read-only, podman's tmpfs /tmp (tmpcopyup) is not.
    r = podman("run", "--rm", "--read-only", image, "sh", "-c",
               "touch /x 2>/dev/null || echo root-ro; touch /tmp/y && echo tmp-rw")
    assert r.returncode == 0 and r.stdout == b"root-ro\ntmp-rw\n", (r.stdout, r.stderr)
    r = podman("run", "--rm", "--network", "none", image, "sh", "-c", "ip -o link | cut -d: -f2")
    assert r.returncode == 0 and r.stdout.split() == [b"lo"], r.stdout


def inspect(podman, name):
    return json.loads(podman("inspect", name, check=True).stdout)[0]


def test_detached_lifecycle_logs_exec_pause_kill_stop(podman, image):
    script = ('trap "echo got-term; exit 3" TERM; trap "echo got-usr1" USR1; echo started; '
              'while true; do sleep 0.2; done')
    r = podman("run", "-d", "--name", "hk-life", image, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: b"started" in podman("logs", "hk-life").stdout, what="started in logs")
    assert inspect(podman, "hk-life")["State"]["Status"] == "running"

    r = podman("exec", "hk-life", "sh", "-c", "echo in-exec; exit 4")
    assert r.returncode == 4 and r.stdout == b"in-exec\n"
    r = podman("exec", "-i", "hk-life", "cat", input=b"through exec\n")
    assert r.stdout == b"through exec\n"
    r = podman("exec", "--user", "1000", "--env", "E=1", "--workdir", "/tmp", "hk-life", "sh", "-c", "id -u; echo $E; pwd")
    assert r.stdout == b"1000\n1\n/tmp\n", r.stdout

    podman("kill", "-s", "USR1", "hk-life", check=True)
    wait_for(lambda: b"got-usr1" in podman("logs", "hk-life").stdout, what="USR1 in logs")

    podman("pause", "hk-life", check=True)
    assert inspect(podman, "hk-life")["State"]["Status"] == "paused"
    podman("unpause", "hk-life", check=True)
    assert inspect(podman, "hk-life")["State"]["Status"] == "running"

    t0 = time.time()
    podman("stop", "-t", "10", "hk-life", check=True)
    assert time.time() - t0 < 10  # SIGTERM was enough: the trap ran
    st = inspect(podman, "hk-life")["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 3
    assert b"got-term" in podman("logs", "hk-life").stdout
    podman("rm", "hk-life", check=True)


def test_stop_escalates_to_sigkill_and_rm_force(podman, image):
    # `sleep` as pid 1 ignores SIGTERM (no handler), as under runc.
    podman("run", "-d", "--name", "hk-stubborn", image, "sleep", "1000", check=True)
    t0 = time.time()
    podman("stop", "-t", "2", "hk-stubborn", check=True)
    assert 2 <= time.time() - t0 < 30
    assert inspect(podman, "hk-stubborn")["State"]["ExitCode"] == 137
    podman("rm", "hk-stubborn", check=True)
    podman("run", "-d", "--name", "hk-rmf", image, "sleep", "1000", check=True)
    podman("rm", "-f", "-t", "0", "hk-rmf", check=True)
    assert podman("ps", "-a", "--format", "{{.Names}}").stdout.split().count(b"hk-rmf") == 0


def test_terminals(podman, image):
    rc, out = in_tty(["podman", "--runtime", HUSK, "run", "--rm", "-t", image, "tty"])
    assert rc == 0 and b"/dev/pts/0" in out, out
    podman("run", "-d", "--name", "hk-tty", image, "sleep", "1000", check=True)
    rc, out = in_tty(["podman", "--runtime", HUSK, "exec", "-t", "hk-tty", "sh", "-c", "tty; exit 5"])
    assert rc == 5 and b"/dev/pts/" in out, out


def test_containers_conf_runtime_entry(podman, image, tmp_path):
    conf = tmp_path / "containers.conf"
    conf.write_text(f'[engine.runtimes]\nhusk = ["{HUSK}"]\n')
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    r = run(["podman", "run", "--rm", "--runtime", "husk", image, "sh", "-c", "cat /proc/cmdline"], env=env, check=False)
    assert r.returncode == 0 and b"husk.channel=" in r.stdout, (r.stdout, r.stderr)


def test_network_published_port_and_dns_files(podman, image):
    # podman's default network (CNI bridge + portmap): the veth it plugs
    # into the container's netns carries the VM's NIC, so a published port
    # reaches busybox httpd in the guest.
    podman("run", "-d", "--name", "hk-web", "-p", "18080:80", image, "sh", "-c", WEB, check=True)
    net = check_published_web(podman, "hk-web", 18080, lambda: inspect(podman, "hk-web"))
    # Another container on the same network reaches it, VM to VM.
    r = podman("run", "--rm", image, "wget", "-q", "-O", "-", f"http://{net['IPAddress']}/")
    assert r.returncode == 0 and r.stdout == b"hello-from-husk\n", (r.stdout, r.stderr)
    podman("rm", "-f", "-t", "0", "hk-web", check=True)


def qemus():
    """husk's VMs (a QEMU booting a husk guest: husk.* on its command line)."""
    return [(pid, cmd[:80]) for pid, cmd in processes_mentioning("husk.channel=") if "qemu-system" in cmd.split(" ")[0]]


def test_pod_one_vm_shared_namespaces_ports_and_lifecycle(podman, image):
    """`podman pod`: the infra container and every member in one VM (issue
    21): 127.0.0.1 and /dev/shm between members, the pod's published port
    to the member that listens, exec into each, a member's own exit, pod
    stop/start/rm."""
    try:
        r = podman("pod", "create", "--name", "hk-pod", "-p", "18082:80")
        assert r.returncode == 0, r.stderr
        r = podman("run", "-d", "--pod", "hk-pod", "--name", "hk-pweb", image, "sh", "-c",
                   "echo from-web > /dev/shm/note; " + WEB)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: http_get("http://127.0.0.1:18082/") == b"hello-from-husk\n", timeout=90, what="the pod's port")
        r = podman("run", "--rm", "--pod", "hk-pod", image, "sh", "-c",
                   "wget -q -O- http://127.0.0.1:80/; cat /dev/shm/note; cat /proc/sys/kernel/random/boot_id")
        assert r.returncode == 0, r.stderr
        page, note, boot = r.stdout.decode().split("\n")[:3]
        assert (page, note) == ("hello-from-husk", "from-web"), r.stdout
        r = podman("exec", "hk-pweb", "cat", "/proc/sys/kernel/random/boot_id", check=True)
        assert r.stdout.decode().strip() == boot, "one VM for the pod"
        assert len(qemus()) == 1, qemus()
        r = podman("pod", "ps", "--format", "{{.Name}} {{.Status}}", check=True)
        assert b"hk-pod Running" in r.stdout, r.stdout
        # A member that ends on its own: its status, the rest runs on.
        r = podman("run", "--pod", "hk-pod", "--name", "hk-p7", image, "sh", "-c", "exit 7")
        assert r.returncode == 7, r.stderr
        assert podman("inspect", "-f", "{{.State.Status}}", "hk-pweb").stdout.strip() == b"running"
        r = podman("pod", "stop", "-t", "2", "hk-pod")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not qemus(), timeout=30, what="the pod's VM to stop")
        r = podman("pod", "start", "hk-pod")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: http_get("http://127.0.0.1:18082/") == b"hello-from-husk\n", timeout=90,
                 what="the pod's port after start")
        assert len(qemus()) == 1, qemus()
    finally:
        podman("pod", "rm", "-f", "-t", "0", "hk-pod")


def test_checkpoint_and_restore_the_whole_vm(podman, image, tmp_path):
    """podman container checkpoint/restore call husk checkpoint/restore:
    the VM saved and loaded (its rootfs on a disk), the shell counting on
    where it was, its published port and address as they were; the same
    through an exported archive (-e/-i); a shared rootfs is refused."""
    counter = "i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done"
    podman("run", "-d", "--name", "hk-ckpt", "--annotation", "org.husk.rootfs=disk", "-p", "18083:80", image, "sh", "-c",
           f"({counter}) & {WEB}", check=True)
    counted = lambda: [int(x) for x in podman("logs", "hk-ckpt").stdout.split()]  # noqa: E731
    wait_for(lambda: len(counted()) >= 5, what="the counter")
    r = podman("container", "checkpoint", "--print-stats", "hk-ckpt")
    assert r.returncode == 0, r.stderr
    criu = json.loads(r.stdout)["container_statistics"][0]["criu_statistics"]  # husk's figures, in CRIU's files
    assert criu["pages_written"] > 0 and 0 < criu["memdump_time"] <= criu["frozen_time"], criu
    st = inspect(podman, "hk-ckpt")["State"]
    assert st["Status"] == "exited" and st["Checkpointed"] is True, st
    before = counted()
    r = podman("container", "restore", "--print-stats", "hk-ckpt")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["container_statistics"][0]["criu_statistics"]["restore_time"] > 0, r.stdout
    st = inspect(podman, "hk-ckpt")["State"]
    assert st["Status"] == "running" and st["Restored"] is True, st
    check_published_web(podman, "hk-ckpt", 18083, lambda: inspect(podman, "hk-ckpt"))
    wait_for(lambda: len(counted()) >= len(before) + 5, what="the restored counter")
    c = counted()
    assert c == list(range(1, len(c) + 1))  # not a line lost or repeated

    archive = tmp_path / "hk-ckpt.tar"
    r = podman("container", "checkpoint", "--compress", "none", "-e", str(archive), "hk-ckpt")
    assert r.returncode == 0, r.stderr
    podman("rm", "hk-ckpt", check=True)
    r = podman("container", "restore", "-i", str(archive))
    assert r.returncode == 0, r.stderr
    at = len(counted())
    wait_for(lambda: len(counted()) >= at + 5, what="the counter restored from the archive")
    c = counted()
    assert c == list(range(1, len(c) + 1))
    assert podman("exec", "hk-ckpt", "true").returncode == 0
    podman("rm", "-f", "-t", "0", "hk-ckpt", check=True)

    podman("run", "-d", "--name", "hk-ckpt-9p", image, "sleep", "1000", check=True)
    r = podman("container", "checkpoint", "hk-ckpt-9p")
    assert r.returncode != 0 and b"org.husk.rootfs=disk" in r.stderr, r.stderr
    assert inspect(podman, "hk-ckpt-9p")["State"]["Status"] == "running"
    podman("rm", "-f", "-t", "0", "hk-ckpt-9p", check=True)


SYSTEM_IMAGE = "localhost/husk-test-busybox-system:latest"


@pytest.fixture(scope="module")
def system_image(system_tar):
    """The busybox image with an init and a kernel of its own (conftest)."""
    run(["podman", "import", system_tar, SYSTEM_IMAGE])
    yield SYSTEM_IMAGE
    run(["podman", "rmi", "-f", SYSTEM_IMAGE], check=False)


def test_a_system_image_boots_its_own_kernel_and_init(podman, system_image):
    """podman run --annotation org.husk.kernel=...: the image's kernel and
    its init (busybox's; podman's systemd mode off, as for any init that
    is not systemd); exec beside it; podman stop powers it off, exit 0."""
    release = header_release(os.path.join(os.path.dirname(HUSK), "rootfs-builder", "vmlinuz"))
    r = podman("run", "-d", "--name", "hk-system", "--systemd", "false", "--annotation", "org.husk.kernel=/boot/vmlinuz",
               system_image, "/sbin/init")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: b"busybox init: up" in podman("logs", "hk-system").stdout, what="busybox init in the logs")
    assert podman("exec", "hk-system", "uname", "-r", check=True).stdout.decode().strip() == release
    assert podman("exec", "hk-system", "cat", "/proc/1/comm", check=True).stdout == b"init\n"
    t0 = time.time()
    podman("stop", "-t", "30", "hk-system", check=True)
    assert time.time() - t0 < 30  # SIGTERM was the power-off, not the kill after the timeout
    st = inspect(podman, "hk-system")["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 0, st
    assert b"busybox init: shutting down" in podman("logs", "hk-system").stdout
    podman("rm", "hk-system", check=True)


def test_a_debian_system_image_boots_systemd_under_podman(podman, tmp_path):
    """The issue's own case: a Debian 12 image built offline from Debian's
    packages (debootstrap with systemd-sysv, and linux-image-amd64's
    kernel and modules over it), imported into podman, and run with
    `podman run --annotation org.husk.kernel=/vmlinuz IMAGE /sbin/init`, so
    in podman's systemd mode: on this cgroup v1 host that spec binds the
    host's systemd hierarchy, which husk replaces with the guest's
    writable cgroup2. systemd reaches multi-user.target, podman exec asks
    it, its console (org.husk.stdio=console) is podman's log, podman stop
    (SIGRTMIN+3: halt) ends it with exit 0."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    deb = run([os.path.join(root, "scripts", "debian-rootfs")], timeout=1200).stdout.decode().strip()
    ker = run([os.path.join(root, "scripts", "debian-kernel")], timeout=600).stdout.decode().strip()
    upper, work, merged = (tmp_path / d for d in ("upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    image = "localhost/husk-test-debian-system:latest"
    run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={ker}:{deb},upperdir={upper},workdir={work}", str(merged)])
    try:
        # The image as a user would make one: the tree, imported (~14 s here).
        run(["sh", "-c", f"tar -C {merged} -c . | podman import -q - {image}"], timeout=600)
    finally:
        run(["umount", "-l", str(merged)], check=False)
    try:
        r = podman("run", "-d", "--name", "hk-systemd", "--annotation", "org.husk.kernel=/vmlinuz",
                   "--annotation", "org.husk.stdio=console", image, "/sbin/init")
        assert r.returncode == 0, r.stderr
        assert inspect(podman, "hk-systemd")["Config"]["SystemdMode"] is True
        answers = []

        def settled():
            answers.append(podman("exec", "hk-systemd", "systemctl", "is-system-running").stdout.decode().strip())
            return answers[-1] in ("running", "degraded", "maintenance")
        wait_for(settled, timeout=240, what="systemd to finish starting")
        failed = podman("exec", "hk-systemd", "systemctl", "--failed", "--no-legend", "--plain").stdout.decode()
        assert answers[-1] == "running", f"systemd is {answers[-1]}: failed units: {failed}"
        assert podman("exec", "hk-systemd", "systemctl", "is-active", "multi-user.target").stdout.strip() == b"active"
        # The guest's console is the container's stdio (org.husk.stdio):
        # podman logs has systemd's boot status and the console getty.
        wait_for(lambda: b"login: " in podman("logs", "hk-systemd").stdout, timeout=60, what="the console's getty")
        assert b"Welcome to" in podman("logs", "hk-systemd").stdout
        t0 = time.time()
        podman("stop", "-t", "60", "hk-systemd", check=True)
        assert time.time() - t0 < 60  # halted, not killed after the timeout
        st = inspect(podman, "hk-systemd")["State"]
        assert st["Status"] == "exited" and st["ExitCode"] == 0, st
        podman("rm", "hk-systemd", check=True)
    finally:
        run(["podman", "rm", "-f", "-t", "0", "hk-systemd"], check=False)
        run(["podman", "rmi", "-f", image], check=False)
