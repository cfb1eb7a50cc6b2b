"""Networking: the container's network namespace carried into the VM.

Each veth in the netns gets a tap and tc redirects both ways; the guest
gets a virtio-net NIC with the veth's MAC and MTU, and the addresses and
routes the veth had. No network namespace in the spec: loopback only.
Every address lives in namespaces the test creates."""
import json
import os
import signal
import subprocess
import uuid

from conftest import assert_untouched, in_netns, link, new_id, sh, wait_for


def test_veth_netns_carried_into_the_vm(husk, bundle, netpair):
    ctr, peer = netpair["ctr"], netpair["peer"]
    host_eth0 = link(ctr, "eth0")
    b = bundle(["nc", "-ll", "-p", "7000", "-e", "cat"], edit=in_netns(netpair["path"]))
    cid = new_id()
    husk("run", "-d", "-b", b, cid, check=True)

    def inside(*cmd):
        r = husk("exec", cid, *cmd)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode()
    # Same MAC and MTU as the host's eth0; its addresses and routes. (Read
    # with exec: on the disk drivers the host does not see the rootfs.)
    mac, mtu = inside("cat", "/sys/class/net/eth0/address", "/sys/class/net/eth0/mtu").split()
    assert (mac, int(mtu)) == (host_eth0["address"], 1400)
    addrs = inside("ip", "-o", "addr", "show", "eth0")
    assert f"inet {netpair['addr']}/24" in addrs and f"inet6 {netpair['addr6']}/64" in addrs, addrs
    routes = inside("ip", "route")
    assert f"default via {netpair['gw']} dev eth0" in routes, routes
    assert f"192.0.2.0/24 via {netpair['gw']} dev eth0" in routes and "metric 7" in routes, routes
    # The host side: the shim's tap, redirected both ways.
    taps = [l["ifname"] for l in json.loads(sh("ip", "-n", ctr, "-j", "link").stdout) if l["ifname"].endswith("_husk")]
    assert taps == ["tap0_husk"]
    assert "mirred" in sh("tc", "-n", ctr, "filter", "show", "dev", "eth0", "ingress").stdout

    # Reached from the peer namespace: ping (v4 and v6) and a TCP echo.
    r = sh("ip", "netns", "exec", peer, "busybox", "ping", "-c", "3", "-W", "5", netpair["addr"], check=False)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    r = sh("ip", "netns", "exec", peer, "busybox", "ping6", "-c", "2", "-W", "5", netpair["addr6"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr

    def echo():
        r = subprocess.run(["ip", "netns", "exec", peer, "busybox", "nc", "-w", "5", netpair["addr"], "7000"],
                           input=b"hello through the vm\n", capture_output=True, timeout=30)
        return r.stdout
    wait_for(lambda: echo() == b"hello through the vm\n", "the TCP echo")

    husk("kill", cid, "KILL", check=True)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the container to stop")
    husk("delete", cid, check=True)
    assert_untouched(ctr)


def test_killed_shim_leaves_nothing_after_delete(husk, bundle, netpair):
    # A shim and VMM killed outright cannot tidy the caller's netns:
    # `delete` does.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"], edit=in_netns(netpair["path"])), cid, check=True)
    assert "mirred" in sh("tc", "-n", netpair["ctr"], "filter", "show", "dev", "eth0", "ingress").stdout
    st = husk.state(cid)
    os.kill(st["pid"], signal.SIGKILL)
    wait_for(lambda: husk.state(cid)["status"] == "stopped", "the container to be reported stopped")
    husk("delete", cid, check=True)
    assert_untouched(netpair["ctr"])


def test_prestart_hook_plugs_the_network(husk, bundle, tmp_path):
    # docker's way: the runtime makes a new netns, and a prestart hook
    # moves a veth into it through the state's pid. The VM's NIC comes
    # from what the hook put there.
    tag = uuid.uuid4().hex[:6]
    peer = f"husk-p{tag}"
    sh("ip", "netns", "add", peer)
    try:
        hook = tmp_path / "plug.sh"
        hook.write_text(f"""#!/bin/sh
set -e
pid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p')
ip link add hc{tag} type veth peer name hp{tag}
ip link set hp{tag} netns {peer}
ip link set hc{tag} netns $pid
nsenter -t $pid -n ip link set hc{tag} name eth0
nsenter -t $pid -n ip addr add 10.77.0.2/24 dev eth0
nsenter -t $pid -n ip link set eth0 up
""")
        hook.chmod(0o755)

        def edit(c):
            c["hooks"] = {"prestart": [{"path": str(hook), "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}]}
        cid = new_id()
        husk("run", "-d", "-b", bundle(["sleep", "1000"], edit=edit), cid, check=True)
        sh("ip", "-n", peer, "addr", "add", "10.77.0.1/24", "dev", f"hp{tag}")
        sh("ip", "-n", peer, "link", "set", f"hp{tag}", "up")
        r = sh("ip", "netns", "exec", peer, "busybox", "ping", "-c", "2", "-W", "5", "10.77.0.2", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        husk("delete", "--force", cid, check=True)
        # The netns was the shim's: it went with it, and the veth with it.
        wait_for(lambda: f"hp{tag}" not in sh("ip", "-n", peer, "link").stdout, "the veth to go")
    finally:
        sh("ip", "netns", "delete", peer, check=False)


def test_no_netns_means_loopback_only(husk, bundle):
    # Without a network namespace entry the VM has no NIC at all, and two
    # such containers cannot reach each other even on the same port.
    def no_netns(c):
        c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
    a = new_id()
    husk("run", "-d", "-b", bundle(["nc", "-ll", "-p", "7001", "-e", "echo", "A"], edit=no_netns), a, check=True)
    b = bundle(["sh", "-c", "ls /sys/class/net; nc -w 3 127.0.0.1 7001 </dev/null && echo reached || echo isolated"],
               edit=no_netns)
    r = husk("run", "-b", b, new_id())
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["lo", "isolated"], r.stdout
    # A new, empty netns is the same: loopback only.
    r = husk("run", "-b", bundle(["ls", "/sys/class/net"]), new_id())
    assert r.stdout.decode().split() == ["lo"], r.stdout
    husk("delete", "--force", a, check=True)
