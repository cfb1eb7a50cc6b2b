"""docker with husk as a runtime from daemon.json, through dockerd and
containerd's runc shim (containerd-shim-runc-v2 calls husk with --root,
--log and --log-format json). A private dockerd per module: its own data
root, exec root and socket."""
import json
import os
import time

import pytest

from conftest import HUSK, WEB, assert_nothing_left, check_published_web, daemon, have, in_tty, run, stop_daemon, wait_for

pytestmark = pytest.mark.skipif(not have("dockerd"), reason="docker.io is not installed (scripts/deps installs it)")

IMAGE = "husk-test-busybox:latest"


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory, rootfs_tar):
    d = tmp_path_factory.mktemp("docker")
    sock = f"unix://{d}/docker.sock"
    # husk-system: a runtime entry whose arguments give husk annotations
    # (husk --annotation), the way a docker older than 24 has to.
    system_args = ["--annotation", "org.husk.kernel=/boot/vmlinuz", "--annotation", "org.husk.stdio=console"]
    cfg = {"runtimes": {"husk": {"path": HUSK}, "husk-system": {"path": HUSK, "runtimeArgs": system_args}},
           "data-root": str(d / "data"), "exec-root": str(d / "exec"),
           "pidfile": str(d / "docker.pid"), "hosts": [sock]}
    (d / "daemon.json").write_text(json.dumps(cfg))

    def ready():
        return run(["docker", "-H", sock, "info"], check=False, timeout=30).returncode == 0
    p = daemon(["dockerd", "--config-file", str(d / "daemon.json")], ready, d / "dockerd.log")
    if p is None:
        pytest.skip("dockerd does not start on this machine: " + (d / "dockerd.log").read_text()[-2000:])
    run(["docker", "-H", sock, "import", rootfs_tar, IMAGE])
    yield sock, str(d / "exec" / "runtime-runc" / "moby")
    stop_daemon(p)


@pytest.fixture
def docker(dockerd):
    sock, husk_root = dockerd
    names = []

    def dk(*args, check=False, input=None, timeout=300):
        if args and args[0] == "run" and "--name" in args:
            names.append(args[args.index("--name") + 1])
        return run(["docker", "-H", sock] + list(args), check=check, input=input, timeout=timeout)
    dk.sock = sock
    yield dk
    for n in names:
        run(["docker", "-H", sock, "rm", "-f", n], check=False)
    assert_nothing_left(husk_root)


def test_run_exit_code_stdin_and_network(docker):
    r = docker("run", "--rm", "--runtime", "husk", IMAGE, "sh", "-c", "echo out; echo err >&2; cat /proc/cmdline")
    assert r.returncode == 0 and r.stdout.startswith(b"out\n") and b"husk.channel=" in r.stdout, (r.stdout, r.stderr)
    assert r.stderr == b"err\n"
    r = docker("run", "--rm", "--runtime", "husk", IMAGE, "sh", "-c", "exit 7")
    assert r.returncode == 7
    r = docker("run", "--rm", "-i", "--runtime", "husk", IMAGE, "wc", "-c", input=b"y" * 50000)
    assert r.stdout.strip() == b"50000"
    # docker's default bridge network: libnetwork's prestart hook configures
    # the namespace the shim and VM live in; the container is named there.
    r = docker("run", "--rm", "--runtime", "husk", "--hostname", "boxy", IMAGE, "sh", "-c", "hostname; grep -c boxy /etc/hosts")
    assert r.returncode == 0 and r.stdout.split() == [b"boxy", b"1"], (r.stdout, r.stderr)


def test_process_options_volumes_and_read_only(docker, tmp_path):
    (tmp_path / "f").write_text("from the host\n")
    os.chmod(tmp_path, 0o777)
    r = docker("run", "--rm", "--runtime", "husk", "-u", "1000:1000", "-e", "FOO=bar", "-w", "/tmp",
               "-v", f"{tmp_path}:/data", IMAGE, "sh", "-c", "id -u; echo $FOO; pwd; cat /data/f; echo back > /data/g")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\n")[:4] == ["1000", "bar", "/tmp", "from the host"], r.stdout
    assert (tmp_path / "g").read_text() == "back\n" and (tmp_path / "g").stat().st_uid == 1000
    r = docker("run", "--rm", "--runtime", "husk", "--read-only", "--tmpfs", "/run", IMAGE, "sh", "-c",
               "touch /x 2>/dev/null || echo root-ro; touch /run/y && echo run-rw")
    assert r.returncode == 0 and r.stdout == b"root-ro\nrun-rw\n", (r.stdout, r.stderr)
    r = docker("run", "--rm", "--runtime", "husk", "--network", "none", IMAGE, "sh", "-c", "ip -o link | cut -d: -f2")
    assert r.returncode == 0 and r.stdout.split() == [b"lo"], r.stdout


def test_detached_exec_kill_pause_stop(docker):
    script = 'trap "echo got-term; exit 3" TERM; trap "echo got-usr1" USR1; echo started; while true; do sleep 0.2; done'
    docker("run", "-d", "--runtime", "husk", "--name", "hk-dk", IMAGE, "sh", "-c", script, check=True)
    wait_for(lambda: b"started" in docker("logs", "hk-dk").stdout, what="logs")
    r = docker("exec", "hk-dk", "sh", "-c", "echo in-exec; exit 4")
    assert r.returncode == 4 and r.stdout == b"in-exec\n"
    r = docker("exec", "-i", "-u", "1000", "-w", "/tmp", "-e", "E=2", "hk-dk", "sh", "-c", "cat; id -u; pwd; echo $E",
               input=b"piped\n")
    assert r.stdout == b"piped\n1000\n/tmp\n2\n", r.stdout
    docker("kill", "-s", "USR1", "hk-dk", check=True)
    wait_for(lambda: b"got-usr1" in docker("logs", "hk-dk").stdout, what="USR1")
    docker("pause", "hk-dk", check=True)
    assert docker("inspect", "-f", "{{.State.Status}}", "hk-dk").stdout.strip() == b"paused"
    docker("unpause", "hk-dk", check=True)
    t0 = time.time()
    docker("stop", "-t", "10", "hk-dk", check=True)
    assert time.time() - t0 < 10
    assert docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "hk-dk").stdout.split() == [b"exited", b"3"]
    docker("rm", "hk-dk", check=True)
    # stop escalates to SIGKILL when SIGTERM does nothing; rm -f ends it.
    docker("run", "-d", "--runtime", "husk", "--name", "hk-dk2", IMAGE, "sleep", "1000", check=True)
    docker("stop", "-t", "1", "hk-dk2", check=True)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", "hk-dk2").stdout.strip() == b"137"
    docker("rm", "hk-dk2", check=True)
    docker("run", "-d", "--runtime", "husk", "--name", "hk-dk3", IMAGE, "sleep", "1000", check=True)
    docker("rm", "-f", "hk-dk3", check=True)


def test_terminals(docker):
    rc, out = in_tty(["docker", "-H", docker.sock, "run", "--rm", "-t", "--runtime", "husk", IMAGE, "tty"])
    assert rc == 0 and b"/dev/pts/0" in out, out
    docker("run", "-d", "--runtime", "husk", "--name", "hk-dktty", IMAGE, "sleep", "1000", check=True)
    rc, out = in_tty(["docker", "-H", docker.sock, "exec", "-t", "hk-dktty", "sh", "-c", "tty; exit 5"])
    assert rc == 5 and b"/dev/pts/" in out, out


def test_published_port_and_dns_files(docker):
    # docker's bridge: libnetwork's prestart hook plugs the veth into the
    # netns before the VM starts, and the NIC follows it; `-p` reaches
    # busybox httpd in the guest through docker's DNAT.
    docker("run", "-d", "--runtime", "husk", "--name", "hk-dkweb", "-p", "18081:80", IMAGE, "sh", "-c", WEB, check=True)
    check_published_web(docker, "hk-dkweb", 18081, lambda: json.loads(docker("inspect", "hk-dkweb", check=True).stdout)[0])
    docker("rm", "-f", "hk-dkweb", check=True)


def test_network_container_joins_that_containers_vm(docker):
    """`--network container:NAME`: the joiner runs in NAME's VM (issue 21)
    and reaches its server on 127.0.0.1."""
    docker("run", "-d", "--runtime", "husk", "--name", "hk-dkpod", IMAGE, "sh", "-c",
           "cat /proc/sys/kernel/random/boot_id > /tmp/boot; " + WEB, check=True)
    r = docker("run", "--rm", "--runtime", "husk", "--network", "container:hk-dkpod", IMAGE, "sh", "-c",
               "for i in $(seq 50); do wget -q -O- http://127.0.0.1:80/ && break; sleep 0.2; done; "
               "cat /proc/sys/kernel/random/boot_id")
    assert r.returncode == 0, r.stderr
    page, boot = r.stdout.decode().split("\n")[:2]
    assert page == "hello-from-husk", r.stdout
    assert docker("exec", "hk-dkpod", "cat", "/tmp/boot", check=True).stdout.decode().strip() == boot, "one VM"
    docker("rm", "-f", "hk-dkpod", check=True)


@pytest.mark.parametrize("how", ["runtime-entry", "annotation"])
def test_a_system_image_boots_its_own_kernel_and_init(docker, system_tar, how):
    """docker run a system image: the image's kernel and busybox's init,
    its console as the container's stdio (org.husk.stdio=console), asked
    for by a runtime entry's arguments (husk-system: husk --annotation) or
    by `docker run --annotation` (Docker 24); docker exec beside it;
    docker stop powers it off (SIGTERM: busybox init's SIGUSR2), exit 0."""
    from husktest import header_release
    if how == "runtime-entry":
        ask = ["--runtime", "husk-system"]
    else:
        api = docker("version", "--format", "{{.Server.APIVersion}}", check=True).stdout.decode().strip()
        if tuple(int(x) for x in api.split(".")) < (1, 43):
            pytest.skip(f"this dockerd speaks API {api}: `docker run --annotation` needs 1.43 (Docker 24); "
                        "the runtime entry's arguments are tested instead")
        ask = ["--runtime", "husk", "--annotation", "org.husk.kernel=/boot/vmlinuz", "--annotation", "org.husk.stdio=console"]
    image = "husk-test-busybox-system:latest"
    run(["docker", "-H", docker.sock, "import", system_tar, image])
    release = header_release(os.path.join(os.path.dirname(HUSK), "rootfs-builder", "vmlinuz"))
    r = docker("run", "-d", *ask, "--name", "hk-dsystem", image, "/sbin/init")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: b"busybox init: up" in docker("logs", "hk-dsystem").stdout, what="busybox init in the logs")
    # Its console: a terminal in the guest, so CR LF.
    assert b"busybox init: up\r\n" in docker("logs", "hk-dsystem").stdout
    assert docker("exec", "hk-dsystem", "uname", "-r", check=True).stdout.decode().strip() == release
    assert docker("exec", "hk-dsystem", "cat", "/proc/1/comm", check=True).stdout == b"init\n"
    t0 = time.time()
    docker("stop", "-t", "30", "hk-dsystem", check=True)
    assert time.time() - t0 < 30  # SIGTERM was the power-off, not the kill after the timeout
    st = json.loads(docker("inspect", "hk-dsystem", check=True).stdout)[0]["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 0, st
    assert b"busybox init: shutting down" in docker("logs", "hk-dsystem").stdout
    docker("rm", "hk-dsystem", check=True)
