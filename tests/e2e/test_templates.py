"""VM templates (docs/design.md, "VM templates"): the first container of a
shape boots and saves its guest; the next ones restore it. Each test has
a template store of its own (HUSK_TEMPLATE_DIR), so it sees the making and
the using. The rest of the suite runs on templates too (conftest.py)."""
import hashlib
import json
import os
import re
import stat
import threading
import time

import pytest

from conftest import jailed_vmm, new_id, reseal

pytestmark = pytest.mark.not_on(("uml", "firecracker", "cloud-hypervisor"),
                                reason="QEMU's templates (q35); UML boots every VM, Firecracker too (it cannot hot-add the "
                                       "rootfs disk), Cloud Hypervisor's are tested in test_vmm_api.py")

REPORT = "sh", "-c", "cat /proc/sys/kernel/random/boot_id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; nproc"


@pytest.fixture
def store(tmp_path):
    d = tmp_path / "templates"
    env = dict(os.environ, HUSK_TEMPLATE_DIR=str(d))
    return d, env


def states(d):
    return sorted(p for p in os.listdir(d) if p.endswith(".state")) if os.path.isdir(d) else []


def run(husk, b, env, debug=True):
    r = husk("run", "-b", b, new_id(), glob=("--debug",) if debug else (), env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    return r.stdout.decode().split("\n"), r.stderr.decode(errors="replace")


def test_the_first_container_of_a_shape_makes_the_template_and_the_next_restore_it(husk, bundle, store):
    d, env = store
    b = bundle(list(REPORT))
    out1, err1 = run(husk, b, env)
    assert re.search(r'msg="template: none of this shape yet: booting to save [0-9a-f]{32}"', err1), err1[-3000:]
    assert re.search(r'msg="template: [0-9a-f]{32} saved in \d+ ms"', err1), err1[-3000:]
    made = states(d)
    assert len(made) == 1
    # Only its owner reads it.
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in os.listdir(d):
        assert stat.S_IMODE(os.stat(d / f).st_mode) == 0o600, f
    out2, err2 = run(husk, b, env)
    assert "template: restoring " in err2, err2[-3000:]
    assert "husk-agent: started" not in err2  # nothing booted
    assert "husk-agent: attached to its container's host (virtiofs)" in err2
    assert "Linux version" not in err2
    assert states(d) == made  # still the one
    # The store as husk reports it.
    listed = json.loads(husk("templates", "list", "-f", "json", env=env, check=True).stdout)
    assert listed["dir"] == str(d)
    assert [t["key"] + ".state" for t in listed["templates"]] == states(d)
    feats = json.loads(husk("features", env=env, check=True).stdout)["annotations"]
    assert feats["org.husk.templates"] == "on"
    assert feats["org.husk.templates.count"] == "1"
    assert int(feats["org.husk.templates.bytes"]) == os.stat(d / states(d)[0]).st_size
    check = husk("check", env=env).stdout.decode()
    assert re.search(r"VM templates\s+ok\s+on: 1 saved", check), check
    # Gone with rm; the next container makes it again.
    husk("templates", "rm", "--all", env=env, check=True)
    assert os.listdir(d) == []
    _, err3 = run(husk, b, env)
    assert "booting to save" in err3
    r = husk("templates", "rm", "0" * 32, env=env)
    assert r.returncode == 1 and b"no such template" in r.stderr


def test_clones_get_their_own_randomness_boot_id_and_clock(husk, bundle, store):
    d, env = store
    b = bundle(list(REPORT))
    run(husk, b, env, debug=False)  # makes it
    seen = []
    for _ in range(2):
        out, _ = run(husk, b, env, debug=False)
        seen.append(out)
    (boot1, rand1, date1, _), (boot2, rand2, date2, _) = (s[:4] for s in seen)
    assert re.fullmatch(r"[0-9a-f-]{36}", boot1) and boot1 != boot2
    assert len(rand1) == 32 and rand1 != rand2
    # The guest's clock is the host's, not the template's.
    for dt in (date1, date2):
        assert abs(int(dt) - time.time()) < 30, (dt, time.time())


def test_a_restored_vm_gets_its_share_and_vcpus(husk, bundle, store):
    d, env = store

    def nine_p_two_cpus(c):
        c.setdefault("annotations", {})["org.husk.share"] = "9p"
        c["linux"]["resources"] = {"cpu": {"quota": 200000, "period": 100000}}

    b = bundle(["sh", "-c", "nproc; cat /etc/passwd | head -1; echo made >/tmp/x; grep ' / ' /proc/mounts | head -1"],
               nine_p_two_cpus)
    run(husk, b, env)
    out, err = run(husk, b, env)
    assert "template: restoring" in err
    assert "husk-agent: attached to its container's host (9p)" in err
    cpus = min(2, os.cpu_count())
    assert out[0] == str(cpus), out
    assert out[1].startswith("root:x:0:0"), out


def fds_of(pid):
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.stat(f"/proc/{pid}/fd/{n}"))
        except OSError:
            pass  # closed meanwhile
    return out


def test_a_template_changed_after_its_save_is_never_restored(husk, bundle, store, tmp_path):
    """The store seals each template (SHA-256 of what the maker's VMM
    saved): one whose bytes changed since is dropped and the VM boots; and
    no VMM holds a template file it could write into."""
    d, env = store
    cid = new_id()
    b = bundle(["sleep", "1000"])
    r = husk("run", "-d", "-b", b, cid, glob=("--debug",), env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    (f,) = states(d)
    saved = os.stat(d / f)
    # The maker's VMM has let go of the file it saved into.
    vmm = jailed_vmm(husk, cid)
    assert not [s for s in fds_of(vmm) if (s.st_dev, s.st_ino) == (saved.st_dev, saved.st_ino)]
    husk("delete", "--force", cid, check=True)
    # A clone's VMM holds it read-only, while it runs.
    cid = new_id()
    husk("run", "-d", "-b", b, cid, env=env, check=True)
    vmm = jailed_vmm(husk, cid)
    for n in os.listdir(f"/proc/{vmm}/fd"):
        try:
            s = os.stat(f"/proc/{vmm}/fd/{n}")
            flags = int(open(f"/proc/{vmm}/fdinfo/{n}").read().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            continue
        if (s.st_dev, s.st_ino) == (saved.st_dev, saved.st_ino):
            assert flags & os.O_ACCMODE == os.O_RDONLY, oct(flags)
    husk("delete", "--force", cid, check=True)
    # One page of the saved RAM changed, the size kept: dropped, not restored.
    with open(d / f, "r+b") as fh:
        fh.seek(saved.st_size // 2)
        fh.write(os.urandom(4096))
    log = tmp_path / "husk.log"
    r = husk("run", "-b", bundle(["echo", "hi"]), new_id(), glob=("--debug", "--log", str(log)), env=env)
    assert r.returncode == 0 and r.stdout == b"hi\n", r.stderr.decode(errors="replace")[-3000:]
    text = log.read_text()
    assert re.search(r'level=warning msg="template [0-9a-f]{32}: dropped: its bytes are not the ones saved \(sha256 [0-9a-f]{64}, '
                     r'sealed [0-9a-f]{64}\); booting to make it again"', text), text[-3000:]
    assert "template: restoring" not in text
    assert "booting to save" in text
    # Made again, sealed again: the next container restores the new one.
    (f2,) = states(d)
    with open(d / f2, "rb") as fh:
        seal = json.load(open(d / (f2[:-len(".state")] + ".seal")))
        assert seal["sha256"] == hashlib.sha256(fh.read()).hexdigest()
    _, err = run(husk, bundle(["true"]), env)
    assert "template: restoring" in err, err[-3000:]


def test_a_template_that_does_not_restore_is_dropped_and_the_vm_boots(husk, bundle, store, tmp_path):
    d, env = store
    b = bundle(["echo", "hi"])
    run(husk, b, env)
    (f,) = states(d)
    size = os.stat(d / f).st_size
    with open(d / f, "r+b") as fh:  # the saved RAM, garbled
        fh.seek(size // 2)
        fh.write(os.urandom(4096))
        fh.truncate(size - 65536)
    reseal(d / f)  # as if saved so (another VMM that writes what this one cannot load)
    log = tmp_path / "husk.log"
    r = husk("run", "-b", b, new_id(), glob=("--log", str(log)), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hi\n"
    text = log.read_text()
    assert re.search(r'level=warning msg="template [0-9a-f]{32} did not restore after \d+ ms \(.*\): dropped, booting the VM instead"',
                     text), text[-3000:]
    assert states(d) == []
    # The next one makes it anew.
    out, err = run(husk, b, env)
    assert out[0] == "hi" and "booting to save" in err
    assert len(states(d)) == 1


def test_templates_off_by_annotation_env_or_config_file(husk, bundle, store, tmp_path):
    d, env = store

    def off(c):
        c.setdefault("annotations", {})["org.husk.template"] = "off"

    _, err = run(husk, bundle(["true"], off), env)
    assert "template: none (annotation org.husk.template=off)" in err
    assert "Linux version" in err  # booted, as before templates
    _, err = run(husk, bundle(["true"]), dict(env, HUSK_TEMPLATES="0"))
    assert "template: none (HUSK_TEMPLATES=0)" in err
    conf = tmp_path / "config.toml"
    conf.write_text("templates = false\n")
    _, err = run(husk, bundle(["true"]), dict(env, HUSK_CONFIG=str(conf)))
    assert "template: none (the config file's templates = false)" in err
    feats = json.loads(husk("features", env=dict(env, HUSK_CONFIG=str(conf)), check=True).stdout)["annotations"]
    assert feats["org.husk.templates"] == "off"
    assert feats["org.husk.templates.reason"] == "the config file's templates = false"
    assert states(d) == []
    # A bad value is refused before anything starts.
    def bad(c):
        c.setdefault("annotations", {})["org.husk.template"] = "sometimes"

    r = husk("run", "-b", bundle(["true"], bad), new_id(), env=env)
    assert r.returncode != 0
    assert b'annotation org.husk.template: expected "on" or "off", got "sometimes"' in r.stderr


def test_two_containers_racing_to_make_one_template(husk, bundle, store):
    d, env = store
    b = bundle(["echo", "ok"])
    results = []

    def one():
        results.append(husk("run", "-b", b, new_id(), glob=("--debug",), env=env))

    ts = [threading.Thread(target=one) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for r in results:
        assert r.returncode == 0 and r.stdout == b"ok\n", r.stderr[-2000:]
    saved = [r for r in results if re.search(rb"template: [0-9a-f]{32} saved in", r.stderr)]
    assert saved  # at least one made it (both may have booted to make it)
    assert len(states(d)) == 1
    assert len(os.listdir(d)) == 3  # its state, shape and seal: nothing half-made


def test_exec_pause_and_kill_on_a_restored_vm(husk, bundle, store):
    d, env = store
    b = bundle(["sleep", "1000"])
    cid = new_id()
    husk("run", "-d", "-b", b, cid, env=env, check=True)  # makes it
    husk("delete", "--force", cid, env=env, check=True)
    cid = new_id()
    r = husk("run", "-d", "-b", b, cid, glob=("--debug",), env=env)
    assert r.returncode == 0 and b"template: restoring" in r.stderr
    try:
        r = husk("exec", cid, "sh", "-c", "echo $((6*7))", env=env)
        assert r.stdout == b"42\n", r.stderr
        husk("pause", cid, env=env, check=True)
        assert husk.state(cid)["status"] == "paused"
        husk("resume", cid, env=env, check=True)
        husk("kill", cid, "KILL", env=env, check=True)
        deadline = time.time() + 30
        while husk.state(cid)["status"] != "stopped":
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        husk("delete", "--force", cid, env=env)
