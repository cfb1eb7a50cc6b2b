"""Kubernetes' path without a kubelet (issue 21): containerd's CRI plugin
over its gRPC socket, husk as the BinaryName of a `husk` runtime handler
(what a RuntimeClass names), both as docs/kubernetes.md gives them. A pod's sandbox and its containers share one
VM: the pause container's, which the app containers join through the CRI
annotations and namespace paths containerd writes."""
import json
import os
import re
import time

import pytest

from conftest import HUSK, ROOT as SOURCES, assert_nothing_left, daemon, have, mkimage, processes_mentioning, run, stop_daemon, wait_for

try:
    import cri
except ImportError:  # python3-grpcio missing
    cri = None

pytestmark = [pytest.mark.skipif(not have("containerd"), reason="containerd is not installed (scripts/deps installs it)"),
              pytest.mark.skipif(cri is None, reason="python3-grpcio is not installed (scripts/deps installs it)"),
              pytest.mark.skipif(not os.path.exists("/usr/lib/cni/bridge"),
                                 reason="containernetworking-plugins is not installed (scripts/deps installs it)")]

IMAGE = "husk.test/busybox:latest"
PAUSE = "husk.test/pause:latest"
HUSK_ROOT = "/run/containerd/runc/k8s.io"  # the runc shim's --root for the CRI's namespace


def doc_block(marker):
    """The fenced block after `marker` in docs/kubernetes.md: the page
    shows what this test runs."""
    with open(os.path.join(SOURCES, "docs", "kubernetes.md")) as f:
        text = f.read()
    m = re.search(re.escape(marker) + r"[^\n]*\n```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/kubernetes.md has no block after {marker}"
    return m.group(1)


# containerd's runtime handler, as the page gives it (runc stays the
# default runtime: only the handler a pod names brings husk in).
HANDLER_TOML = doc_block("<!-- containerd-runtime-handler")
assert '"/usr/bin/husk"' in HANDLER_TOML, "the page's BinaryName is the test's to point at the husk under test"
# The handler a RuntimeClass names, which a kubelet passes to RunPodSandbox.
HANDLER = re.search(r"^handler: (\S+)$", doc_block("<!-- runtime-class"), re.M).group(1)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    d = tmp_path_factory.mktemp("cri")
    sock = str(d / "containerd.sock")
    (d / "cni").mkdir()
    (d / "cni" / "10-husk.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "husk-cri", "plugins": [
            {"type": "bridge", "bridge": "huskcri0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.77.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "loopback"}]}))
    (d / "config.toml").write_text(f"""version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
{HANDLER_TOML.replace('"/usr/bin/husk"', json.dumps(HUSK))}""")

    def ready():
        return os.path.exists(sock) and run(["ctr", "-a", sock, "version"], check=False, timeout=30).returncode == 0
    p = daemon(["containerd", "--config", str(d / "config.toml")], ready, d / "containerd.log")
    if p is None:
        pytest.skip("containerd does not start on this machine: " + (d / "containerd.log").read_text()[-2000:])
    for ref, cmd in ((IMAGE, ("sh",)), (PAUSE, ("sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done"))):
        archive = str(d / "image.tar")
        mkimage.oci_archive(archive, ref, cmd)
        run(["ctr", "-a", sock, "-n", "k8s.io", "image", "import", archive])
    yield cri.Runtime(sock), d
    stop_daemon(p)
    run(["ip", "link", "del", "huskcri0"], check=False)


def vms():
    return [pid for pid, cmd in processes_mentioning("husk.channel=") if "qemu-system" in cmd.split(" ")[0]]


def test_pod_sandbox_and_two_containers_in_one_vm(runtime):
    rt, d = runtime
    logs = d / "logs"
    logs.mkdir(exist_ok=True)
    config = rt.sandbox_config("hk-pod", "uid-1", str(logs))
    pod = rt.run_pod_sandbox(config, HANDLER)
    try:
        ip = rt.pod_ip(pod)
        assert ip.startswith("10.88.77."), ip
        web = rt.create_container(pod, config, "web", IMAGE,
                                  ["sh", "-c", "echo hi-from-web > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"], "web.log")
        rt.start_container(web)
        client = rt.create_container(pod, config, "client", IMAGE, ["sh", "-c", "sleep 1000"], "client.log")
        rt.start_container(client)
        assert rt.container_status(web)[0] == cri.RUNNING and rt.container_status(client)[0] == cri.RUNNING
        boots = set()
        for c in (web, client):
            out, err, code = rt.exec_sync(c, ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; ip -o -4 addr show eth0"])
            assert code == 0, err
            boot, addr = out.decode().split("\n")[:2]
            assert f"inet {ip}/" in addr, addr  # the pod IP, in each
            boots.add(boot)
        assert len(boots) == 1, "one VM for the pod"
        assert len(vms()) == 1, vms()
        out, err, code = rt.exec_sync(client, ["sh", "-c", "for i in $(seq 50); do wget -q -O- http://127.0.0.1:8080/ && break; "
                                                            "sleep 0.2; done"])
        assert code == 0 and out == b"hi-from-web\n", (out, err)
        out, err, code = rt.exec_sync(client, ["sh", "-c", "exit 5"])
        assert code == 5
        # A container that ends on its own: its status, the pod runs on.
        job = rt.create_container(pod, config, "job", IMAGE, ["sh", "-c", "exit 7"], "job.log")
        rt.start_container(job)
        wait_for(lambda: rt.container_status(job)[0] == cri.EXITED, timeout=60, what="the job to exit")
        assert rt.container_status(job) == (cri.EXITED, 7)
        assert rt.container_status(web)[0] == cri.RUNNING
    finally:
        rt.stop_pod_sandbox(pod)
        rt.remove_pod_sandbox(pod)
    wait_for(lambda: not vms(), timeout=30, what="the pod's VM to stop")
    assert_nothing_left(HUSK_ROOT)
