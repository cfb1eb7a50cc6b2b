"""Every failure: one clear line naming the container, the step and the
cause; a non-zero exit; and nothing left behind (the leak check runs after
each test)."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from conftest import BUSYBOX, DRIVER, new_id


def assert_clean_failure(r, *needles):
    assert r.returncode != 0
    err = r.stderr.decode()
    assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("edit,needle", [
    (lambda c: c["process"].update(args="sh"), "config.json: process.args: expected array, got string"),
    (lambda c: c["process"].update(cwd="relative"), "config.json: process.cwd: must be an absolute path"),
    (lambda c: c.pop("root"), "config.json: root: required"),
    (lambda c: c["mounts"].append({"destination": "rel", "type": "tmpfs"}), "config.json: mounts[7].destination"),
    (lambda c: c["process"]["user"].update(uid="0"), "config.json: process.user.uid: expected integer"),
])
def test_invalid_config(husk, bundle, edit, needle):
    cid = new_id()
    r = husk("create", "-b", bundle(["true"], edit=edit), cid)
    assert_clean_failure(r, f"create {cid}", needle)


def test_config_not_json(husk, bundle):
    b = bundle(["true"])
    with open(os.path.join(b, "config.json"), "w") as f:
        f.write("{nope")
    assert_clean_failure(husk("run", "-b", b, new_id()), "config.json: not valid JSON")


def test_missing_bundle(husk, tmp_path):
    assert_clean_failure(husk("create", "-b", str(tmp_path / "nowhere"), new_id()), "bundle")


def test_missing_rootfs(husk, bundle):
    b = bundle(["true"])
    shutil.rmtree(os.path.join(b, "rootfs"))
    assert_clean_failure(husk("create", "-b", b, new_id()), "rootfs", "does not exist")


def test_missing_bind_source(husk, bundle, tmp_path):
    b = bundle(["true"], edit=lambda c: c["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(tmp_path / "absent"), "options": ["rbind"]}))
    assert_clean_failure(husk("create", "-b", b, new_id()), "share rootfs", "does not exist")


def test_missing_executable_fails_create(husk, bundle):
    cid = new_id()
    r = husk("create", "-b", bundle(["no-such-binary"]), cid, stdin=subprocess.DEVNULL)
    assert_clean_failure(r, f"create {cid}", "executable file not found")


def test_invalid_id(husk, bundle):
    assert_clean_failure(husk("create", "-b", bundle(["true"]), "../escape"), "invalid container id")


def test_duplicate_id(husk, bundle):
    cid = new_id()
    husk("create", "-b", bundle(["sleep", "100"]), cid, stdin=subprocess.DEVNULL, check=True)
    r = husk("create", "-b", bundle(["true"]), cid)
    assert_clean_failure(r, "container with id exists")
    assert husk.state(cid)["status"] == "created"  # the first one is untouched
    husk("delete", cid, check=True)


@pytest.mark.parametrize("verb", ["state", "start", "kill", "delete"])
def test_unknown_id(husk, verb):
    assert_clean_failure(husk(verb, "nosuch"), f"{verb} nosuch", "container does not exist")


def test_bad_signal(husk, bundle):
    cid = new_id()
    husk("create", "-b", bundle(["sleep", "100"]), cid, stdin=subprocess.DEVNULL, check=True)
    for bad in ("SIGNOPE", "65", "99"):  # 0 is the existence check (test_runc_parity)
        assert_clean_failure(husk("kill", cid, bad), "unknown signal")
    assert husk.state(cid)["status"] == "created"
    husk("delete", cid, check=True)


def test_log_json_records_the_error(husk, bundle, tmp_path):
    log = tmp_path / "log.json"
    b = bundle(["true"])
    shutil.rmtree(os.path.join(b, "rootfs"))
    r = husk("create", "-b", b, "x1", glob=("--log", str(log), "--log-format", "json"))
    assert r.returncode != 0
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert lines[-1]["level"] == "error"
    assert "does not exist" in lines[-1]["msg"] and "time" in lines[-1]


def make_initramfs(path, init_script):
    """A tiny initramfs: busybox, a /dev/console node, and the given /init."""
    d = path + ".d"
    os.makedirs(d + "/bin")
    os.makedirs(d + "/dev")
    os.mknod(d + "/dev/console", 0o600 | 0o020000, os.makedev(5, 1))
    if init_script is not None:
        shutil.copy2(BUSYBOX, d + "/bin/busybox")
        with open(d + "/init", "w") as f:
            f.write("#!/bin/busybox sh\n" + init_script)
        os.chmod(d + "/init", 0o755)
    files = subprocess.run(["find", "."], cwd=d, capture_output=True, check=True).stdout
    with open(path, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=d, input=files, stdout=out, check=True)
    return path


def test_vm_that_never_answers_times_out_with_console_tail(husk, bundle, tmp_path):
    initrd = make_initramfs(str(tmp_path / "hang.img"), "echo fake-init-is-hanging\nexec /bin/busybox sleep 1000\n")
    # The guest must reach its init before the deadline for the tail to
    # show it: 15 s was not always enough for UML beside another test on
    # 2 CPUs (one CI run in many: its tail ended in the kernel's own boot).
    b = bundle(["true"], edit=lambda c: c.update(annotations={"org.husk.boot-timeout": "30"}))
    env = dict(os.environ, HUSK_INITRD=initrd)
    cid = new_id()
    r = husk("create", "-b", b, cid, env=env, stdin=subprocess.DEVNULL)
    assert_clean_failure(r, f"create {cid}", "did not answer within 30", "fake-init-is-hanging")


def test_vm_that_dies_during_boot_reports_the_panic(husk, bundle, tmp_path):
    initrd = make_initramfs(str(tmp_path / "empty.img"), None)
    env = dict(os.environ, HUSK_INITRD=initrd)
    r = husk("run", "-b", bundle(["true"]), new_id(), env=env, stdin=subprocess.DEVNULL)
    assert_clean_failure(r, "vm exited before the agent answered", "Kernel panic")


@pytest.mark.parametrize("value", ["soon", "nan", "1e300", "-1", "0", "inf", "5s", ""])
def test_bad_boot_timeout_annotation(husk, bundle, value):
    b = bundle(["true"], edit=lambda c: c.update(annotations={"org.husk.boot-timeout": value}))
    r = husk("create", "-b", b, new_id())
    assert_clean_failure(r, "annotation org.husk.boot-timeout: expected seconds in (0, 86400]")
    # Refused by create itself, before any shim or VM (whose errors say "start vm").
    assert b"start vm" not in r.stderr, r.stderr


# Each driver's kernel, and what create says when it is missing.
GUEST_KERNEL = {"qemu": ("HUSK_KERNEL", "guest image"), "uml": ("HUSK_UML", "hypervisor uml"),
                "firecracker": ("HUSK_KERNEL", "guest image"), "cloud-hypervisor": ("HUSK_KERNEL", "guest image")}


def test_missing_guest_image(husk, bundle, tmp_path):
    var, says = GUEST_KERNEL[DRIVER]
    env = dict(os.environ, **{var: str(tmp_path / "no-kernel")})
    assert_clean_failure(husk("create", "-b", bundle(["true"]), new_id(), env=env), says, "not found")


def test_missing_shim_binary(husk, bundle, tmp_path):
    env = dict(os.environ, HUSK_SHIM=str(tmp_path / "no-shim"))
    assert_clean_failure(husk("create", "-b", bundle(["true"]), new_id(), env=env), "start shim", "exec ")


def test_a_malformed_request_on_shim_sock_is_refused_and_the_container_lives_on(husk, bundle):
    # Fields of the wrong type (json::value() would throw): an error reply,
    # never the end of the shim and its container.
    cid = new_id()
    husk("run", "-d", "-b", bundle(["sleep", "1000"]), cid, check=True)
    for req in (b'{"op":"kill","signal":"TERM"}\n', b'{"op":"kill","all":1}\n', b'{"op":"update","files":7}\n'):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(os.path.join(husk.root, cid, "shim.sock"))
            s.sendall(req)
            reply = json.loads(s.makefile().readline())
        assert reply["ok"] is False, (req, reply)
        assert husk.state(cid)["status"] == "running"
    husk("delete", "--force", cid, check=True)


def test_a_client_that_does_not_read_its_reply_stalls_nothing(husk, bundle):
    # ps of 200 processes with 4 KiB command lines is a reply of ~1 MiB,
    # far more than a unix socket holds: the shim must go on serving
    # everyone else (and the container's stdio) while this client sleeps.
    cid = new_id()
    pad = "x" * 4000
    # (sh stays, its long argv in its command line; each has a sleep child)
    script = f"for i in $(seq 200); do sh -c 'sleep 1000; true' {pad} & done; wait"
    husk("run", "-d", "-b", bundle(["sh", "-c", script]), cid, check=True)
    deadline = time.time() + 60
    while len(json.loads(husk("ps", "--format", "json", cid, check=True).stdout)) < 401:
        assert time.time() < deadline
        time.sleep(0.5)
    stuck = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.path.join(husk.root, cid, "shim.sock"))
        s.sendall(b'{"op":"ps"}\n')
        stuck.append(s)
    try:
        t0 = time.time()
        r = husk("exec", cid, "echo", "served", timeout=30)
        assert r.returncode == 0 and r.stdout == b"served\n", r.stderr
        assert husk.state(cid)["status"] == "running" and time.time() - t0 < 30
        # The stuck clients still get their whole replies once they read.
        f = stuck[0].makefile("rb")
        reply = json.loads(f.readline())
        assert reply["ok"] and len(reply["result"]) == 401
    finally:
        for s in stuck:
            s.close()
    husk("delete", "--force", cid, check=True)
