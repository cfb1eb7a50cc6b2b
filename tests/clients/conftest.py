"""Fixtures for the client suites: the built husk, the offline test image,
and a leak check (no husk state, no shim, no QEMU) after every test."""
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("HUSK_BUILD", os.path.join(ROOT, "build"))
HUSK = os.path.join(BUILD, "husk")
HUSK_STATE = "/run/husk"  # clients call husk without --root
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib"))
import mkimage  # noqa: E402
from husktest import processes_mentioning  # noqa: E402


def pytest_configure(config):
    if not os.access(HUSK, os.X_OK):
        raise pytest.UsageError(f"{HUSK} not built (run scripts/test or meson/ninja first)")


def husk_processes():
    return [(pid, cmd[:120]) for pid, cmd in processes_mentioning("")
            if "husk-shim" in cmd or (cmd.startswith("qemu-system") and HUSK_STATE in cmd)]


def assert_nothing_left():
    deadline = time.time() + 15
    while True:
        procs = husk_processes()
        state = os.listdir(HUSK_STATE) if os.path.isdir(HUSK_STATE) else []
        if not procs and not state:
            return
        if time.time() > deadline:
            break
        time.sleep(0.3)
    assert not procs, f"leaked processes: {procs}"
    assert not state, f"leaked husk state: {state}"


def run(cmd, check=True, timeout=300, **kw):
    r = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


@pytest.fixture(scope="session")
def rootfs_tar(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("image") / "busybox.tar")
    with open(p, "wb") as f:
        f.write(mkimage.rootfs_tar_bytes())
    return p


def have(binary):
    return shutil.which(binary) is not None
