"""husk's automatic driver choice (src/husk/driver_choice.h), end to end:
with nothing naming a driver, a bundle as `husk spec` writes it goes to UML
on a host without KVM, a container that may write files as another user
goes to QEMU, and --debug and `husk check` say which and why."""
import json
import os

import pytest

from conftest import DRIVER, HUSK, KVM_SHAPE, default_spec_bundle

pytestmark = pytest.mark.skipif(DRIVER != "qemu" or KVM_SHAPE, reason="picks its drivers itself; runs in the default pass")

# Nothing names a driver: no HUSK_HYPERVISOR, no config file.
AUTO_ENV = {k: v for k, v in os.environ.items() if k != "HUSK_HYPERVISOR"}


def host_rule(husk):
    r = husk("check", "-f", "json", env=AUTO_ENV, check=True)
    return json.loads(r.stdout)


def needs_no_kvm_and_uml(husk):
    j = host_rule(husk)
    if j["hypervisor_reason"].startswith("KVM works"):
        pytest.skip("KVM works here: every container gets QEMU under KVM (unit tests cover the rest)")
    uml = next(c for c in j["checks"] if c["name"] == "driver uml")
    if not uml["ok"]:
        pytest.skip(f"UML is not installed here: {uml['detail']}")
    return j


def guest_kind(out):
    # UML's /proc/cpuinfo names no CPU model but "UML"; QEMU's guest sees a CPU.
    return "uml" if "UML" in out else "qemu"


def test_check_states_the_rule(husk):
    j = host_rule(husk)
    assert j["hypervisor"] == "qemu"  # the driver any container can have
    checks = {c["name"]: c for c in j["checks"]}
    assert checks["default driver"]["detail"] == "qemu: " + j["hypervisor_reason"]
    if not j["hypervisor_reason"].startswith("KVM works"):
        assert j["hypervisor_reason"].startswith("no usable KVM")
        if checks["driver uml"]["ok"]:
            assert "UML for a container that needs nothing it lacks" in j["hypervisor_reason"]
    table = husk("check", env=AUTO_ENV).stdout.decode()
    assert "default driver" in table and j["hypervisor_reason"] in table


def test_a_husk_spec_bundle_runs_on_uml_without_kvm(husk, tmp_path):
    needs_no_kvm_and_uml(husk)
    b = default_spec_bundle(tmp_path, ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo; exit 4"])
    r = husk("--debug", "run", "-b", b, "auto-uml", env=AUTO_ENV)
    err = r.stderr.decode()
    assert r.returncode == 4, err
    assert "hypervisor uml: no usable KVM" in err and "needs nothing UML lacks" in err, err
    assert guest_kind(r.stdout.decode()) == "uml", r.stdout
    # An annotation still names the driver.
    with open(os.path.join(b, "config.json")) as f:
        c = json.load(f)
    c["annotations"] = {"org.husk.hypervisor": "qemu"}
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(c, f)
    r = husk("--debug", "run", "-b", b, "auto-named", env=AUTO_ENV)
    assert r.returncode == 4
    assert "hypervisor qemu: annotation org.husk.hypervisor says qemu" in r.stderr.decode()
    assert guest_kind(r.stdout.decode()) == "qemu", r.stdout


def test_a_container_that_may_write_as_another_user_runs_on_qemu(husk, tmp_path):
    """hostfs would make what uid 1000 creates root's (and then not its own
    to append to after a chmod): such a container gets QEMU, and its files
    keep their owner."""
    needs_no_kvm_and_uml(husk)
    b = default_spec_bundle(tmp_path, ["sh", "-c", "grep -m1 'model name' /proc/cpuinfo; cd /tmp && echo a > f && "
                                                   "chmod 600 f && echo b >> f && cat f"])
    with open(os.path.join(b, "config.json")) as f:
        c = json.load(f)
    c["process"]["user"] = {"uid": 1000, "gid": 1000}
    c["root"]["readonly"] = False
    with open(os.path.join(b, "config.json"), "w") as f:
        json.dump(c, f)
    os.chmod(os.path.join(b, "rootfs", "tmp"), 0o1777)
    r = husk("--debug", "run", "-b", b, "auto-user", env=AUTO_ENV)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "hypervisor qemu: no usable KVM" in err and "runs as uid 1000 gid 1000" in err, err
    out = r.stdout.decode()
    assert guest_kind(out) == "qemu" and out.endswith("a\nb\n"), out
    st = os.stat(os.path.join(b, "rootfs", "tmp", "f"))
    assert (st.st_uid, st.st_gid) == (1000, 1000)
