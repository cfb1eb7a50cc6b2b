"""OCI hooks on the host: prestart and createRuntime during create,
poststart after start, poststop after delete; in the guest, in the
container: createContainer and startContainer. The state on stdin, the
hook's own args and env, timeouts, and the runtime spec's failure rules."""
import json
import time

from conftest import new_id


def hook(tmp_path, stage, script="", env=(), timeout=None):
    h = {"path": "/bin/sh",
         "args": ["sh", "-c", f"/bin/cat > {tmp_path}/{stage}.json; echo {stage} >> {tmp_path}/order; "
                              f"/usr/bin/env > {tmp_path}/{stage}.env; " + script],
         "env": list(env)}
    if timeout:
        h["timeout"] = timeout
    return h


def test_hooks_run_in_order_with_the_state(husk, bundle, tmp_path):
    stages = ["prestart", "createRuntime", "poststart", "poststop"]

    def edit(c):
        c["hooks"] = {s: [hook(tmp_path, s, env=["FOO=bar"])] for s in stages}
    cid = new_id()
    b = bundle(["sleep", "1000"], edit=edit)
    pidfile = tmp_path / "pid"
    husk("create", "-b", b, "--pid-file", str(pidfile), cid, check=True)
    assert (tmp_path / "order").read_text().split() == ["prestart", "createRuntime"]
    for s in ["prestart", "createRuntime"]:
        st = json.loads((tmp_path / f"{s}.json").read_text())
        assert (st["id"], st["status"], st["pid"], st["bundle"]) == (cid, "creating", int(pidfile.read_text()), b)
    # A hook gets exactly its own env, nothing of ours.
    env = (tmp_path / "prestart.env").read_text().split()
    assert "FOO=bar" in env and not any(e.startswith("PYTEST_") for e in env)

    husk("start", cid, check=True)
    assert (tmp_path / "order").read_text().split() == ["prestart", "createRuntime", "poststart"]
    assert json.loads((tmp_path / "poststart.json").read_text())["status"] == "running"
    husk("delete", "--force", cid, check=True)
    assert (tmp_path / "order").read_text().split() == stages
    assert json.loads((tmp_path / "poststop.json").read_text())["status"] == "stopped"


def test_hook_failures(husk, bundle, tmp_path):
    # A failing createRuntime hook fails create and leaves nothing behind
    # (the fixture checks: no VM, no mount, no state).
    def failing(c):
        c["hooks"] = {"createRuntime": [hook(tmp_path, "createRuntime", "echo boom >&2; exit 3")]}
    r = husk("create", "-b", bundle(["true"], edit=failing), new_id())
    assert r.returncode != 0
    assert b"createRuntime hook /bin/sh: exit status 3: boom" in r.stderr

    def slow(c):
        c["hooks"] = {"prestart": [hook(tmp_path, "prestart", "/bin/sleep 30", timeout=1)]}
    t0 = time.time()
    r = husk("create", "-b", bundle(["true"], edit=slow), new_id())
    assert r.returncode != 0 and b"prestart hook /bin/sh: timed out after 1s" in r.stderr
    assert time.time() - t0 < 60

    # poststart and poststop failures are warnings: the lifecycle goes on.
    def warn(c):
        c["hooks"] = {"poststart": [hook(tmp_path, "poststart", "exit 1")],
                      "poststop": [hook(tmp_path, "poststop", "exit 2")]}
    cid = new_id()
    log = tmp_path / "log"
    husk("run", "-d", "-b", bundle(["sleep", "1000"], edit=warn), cid, glob=("--log", str(log)), check=True)
    assert husk.state(cid)["status"] == "running"
    husk("delete", "--force", cid, glob=("--log", str(log)), check=True)
    text = log.read_text()
    assert "poststart hook /bin/sh: exit status 1" in text and "poststop hook /bin/sh: exit status 2" in text

    # Bad hooks and guest-side stages are refused up front.
    for edit, msg in [(lambda c: c.update(hooks={"prestart": [{"path": "rel/hook"}]}),
                       b'hooks.prestart[0].path: must be an absolute path, got "rel/hook"'),
                      (lambda c: c.update(hooks={"poststop": [{"path": "/bin/true", "timeout": 0}]}),
                       b"hooks.poststop[0].timeout: must be between 1 and 86400 seconds")]:
        r = husk("create", "-b", bundle(["true"], edit=edit), new_id())
        assert r.returncode != 0 and msg in r.stderr, (msg, r.stderr)


def guest_hook(stage, script="", timeout=None):
    # Runs inside the container: paths are the container's, and /tmp is its
    # rootfs, which the host shares.
    h = {"path": "/bin/sh",
         "args": ["sh", "-c", f"cat > /tmp/{stage}.json; echo {stage} $(cat /proc/self/cgroup) "
                              f"$(hostname) $(id -u) >> /tmp/order; env > /tmp/{stage}.env; " + script],
         "env": ["HOOK=" + stage]}
    if timeout:
        h["timeout"] = timeout
    return h


def test_container_hooks_run_in_the_guest(husk, bundle):
    def edit(c):
        c["process"]["user"] = {"uid": 1000, "gid": 1000}
        c["hooks"] = {"createContainer": [guest_hook("createContainer")],
                      "startContainer": [guest_hook("startContainer")]}
    cid = new_id()
    b = bundle(["sh", "-c", "echo workload >> /tmp/order"], edit=edit)
    import os
    os.chmod(os.path.join(b, "rootfs", "tmp"), 0o1777)
    order = os.path.join(b, "rootfs", "tmp", "order")
    open(order, "w").close()
    os.chmod(order, 0o666)  # uid 1000 appends too
    husk("create", "-b", b, cid, check=True)
    assert open(order).read().split("\n")[0] == "createContainer 0::/ husk-test 0"
    st = json.loads(open(os.path.join(b, "rootfs", "tmp", "createContainer.json")).read())
    assert (st["id"], st["status"], st["pid"], st["bundle"]) == (cid, "creating", husk.state(cid)["pid"], b)
    assert "HOOK=createContainer" in open(os.path.join(b, "rootfs", "tmp", "createContainer.env")).read().split()
    husk("start", cid, check=True)
    deadline = time.time() + 60
    while husk.state(cid)["status"] != "stopped":
        assert time.time() < deadline
        time.sleep(0.2)
    # startContainer runs as the process will, just before its program.
    assert open(order).read().split("\n")[1:3] == ["startContainer 0::/ husk-test 1000", "workload"]
    st = json.loads(open(os.path.join(b, "rootfs", "tmp", "startContainer.json")).read())
    assert (st["id"], st["status"]) == (cid, "created")
    husk("delete", cid, check=True)

    # A failing createContainer hook fails create, leaving nothing; a
    # failing startContainer hook fails start, and the program never runs.
    def failing(c):
        c["hooks"] = {"createContainer": [guest_hook("createContainer", "echo boom >&2; exit 5")]}
    r = husk("create", "-b", bundle(["true"], edit=failing), new_id())
    assert r.returncode != 0 and b"createContainer hook /bin/sh: exit status 5: boom" in r.stderr, r.stderr

    def failing_start(c):
        c["hooks"] = {"startContainer": [guest_hook("startContainer", "exit 6")]}
    cid = new_id()
    b = bundle(["sh", "-c", "echo workload >> /tmp/order"], edit=failing_start)
    husk("create", "-b", b, cid, check=True)
    r = husk("start", cid)
    assert r.returncode != 0 and b"startContainer hook /bin/sh: exit status 6" in r.stderr, r.stderr
    assert "workload" not in open(os.path.join(b, "rootfs", "tmp", "order")).read()
    husk("delete", "--force", cid, check=True)
