"""The Debian package (debian/): built with dpkg-buildpackage from the
sources, held to lintian, installed on this machine with apt, used as a
user would use it (the installed husk only, no build tree, no HUSK_*
variables: a container from a `husk spec` bundle, its manual pages, bash
completion), then purged, leaving nothing behind.

HUSK_DEB names an already built .deb to test instead of building one.
"""
import json
import os
import re
import shutil
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What a user's shell has: no build tree, no HUSK_* variables.
USER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}
INSTALLED = ["/usr/bin/husk", "/usr/libexec/husk/husk-shim", "/usr/libexec/husk/husk-vsock", "/usr/share/husk/vmlinux", "/usr/share/husk/vmlinuz",
             "/usr/share/husk/initramfs.img", "/usr/share/bash-completion/completions/husk", "/etc/husk/config.toml",
             "/usr/share/man/man8/husk.8.gz", "/usr/share/man/man5/husk-config.5.gz"]


def run(cmd, check=True, timeout=600, capture_output=True, **kw):
    r = subprocess.run(cmd, capture_output=capture_output, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{(r.stdout or '')[-3000:]}\n{(r.stderr or '')[-3000:]}")
    return r


def version():
    with open(os.path.join(ROOT, "debian", "changelog")) as f:
        return re.match(r"husk \(([^)]+)\)", f.readline()).group(1)


@pytest.fixture(scope="session")
def deb(tmp_path_factory):
    if os.environ.get("HUSK_DEB"):
        return os.environ["HUSK_DEB"]
    # The sources as git knows them (tracked files and new ones not
    # ignored), so that no build tree or cache of this checkout leaks in.
    top = tmp_path_factory.mktemp("deb")
    src = top / "husk"
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    for rel in filter(None, files):
        if os.path.lexists(os.path.join(ROOT, rel)):
            os.makedirs(os.path.dirname(src / rel), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, rel), src / rel, follow_symlinks=False)
    env = dict(os.environ)
    # No unit tests (scripts/test ran them) and no -dbgsym package; the
    # kernel .deb from the suite's cache. What is packaged is the same.
    env["DEB_BUILD_OPTIONS"] = f"nocheck noddebs parallel={os.cpu_count()}"
    env.setdefault("HUSK_CACHE", os.path.expanduser("~/.cache/husk"))
    t = time.monotonic()
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, env=env, timeout=1800)
    print(f"dpkg-buildpackage: {time.monotonic() - t:.0f} s")
    path = str(top / f"husk_{version()}_amd64.deb")
    assert os.path.exists(path), os.listdir(top)
    return path


@pytest.fixture(scope="session")
def installed(deb):
    """The package installed with apt (its dependencies from the archive),
    purged afterwards."""
    if os.path.exists("/usr/bin/husk"):
        pytest.fail("/usr/bin/husk is already installed on this machine: the test would replace it")
    run(["apt-get", "install", "-y", "-q", "--no-install-recommends", deb],
        env={**USER_ENV, "DEBIAN_FRONTEND": "noninteractive"})
    yield deb
    # test_purge_leaves_nothing purged it; this is for a test that failed first.
    if os.path.exists("/usr/bin/husk"):
        run(["apt-get", "purge", "-y", "-q", "husk"], env={**USER_ENV, "DEBIAN_FRONTEND": "noninteractive"})


def kernel_release(bzimage):
    """The release a bzImage's header names (its kernel_version field)."""
    with open(bzimage, "rb") as f:
        data = f.read(0x10000)
    at = int.from_bytes(data[0x20E:0x210], "little") + 0x200
    return data[at:data.index(b"\0", at)].decode().split()[0]


def husk(*args, check=True, **kw):
    return run(["husk", *args], check=check, env=USER_ENV, **kw)


def test_lintian_is_clean(deb):
    # Every override (debian/husk.lintian-overrides) says why; anything
    # else at warning level or above fails.
    changes = deb[:-len(".deb")] + ".changes"
    r = run(["lintian", "--fail-on", "error,warning", "--pedantic", changes], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # The overrides are the two on vmlinux, and they still apply.
    r = run(["lintian", "--show-overrides", changes], check=False)
    assert re.findall(r"^O: husk: (\S+)", r.stdout, re.M) == ["arch-dependent-file-in-usr-share", "statically-linked-binary"]


def test_package_holds_what_husk_needs(deb):
    listing = run(["dpkg-deb", "--contents", deb]).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for p in INSTALLED:
        assert p in paths, p
    # One page per subcommand, as runc ships them.
    subs = re.findall(r"^  (\w+) ", run([os.path.join(ROOT, "build", "husk"), "--help"]).stdout.split("Subcommands:")[1], re.M)
    assert len(subs) >= 19
    for s in subs:
        assert f"/usr/share/man/man8/husk-{s}.8.gz" in paths, s
    fields = run(["dpkg-deb", "--field", deb]).stdout
    assert re.search(r"^Depends: .*qemu-system-x86", fields, re.M)
    assert re.search(r"^Recommends: .*user-mode-linux", fields, re.M)
    assert run(["dpkg-deb", "--info", deb, "conffiles"]).stdout.split() == ["/etc/husk/config.toml"]


def test_installed_husk_runs_a_husk_spec_bundle(installed, tmp_path):
    assert run(["sh", "-c", "command -v husk"], env=USER_ENV).stdout.strip() == "/usr/bin/husk"
    assert f"husk version {version()}" in husk("--version").stdout
    check = json.loads(husk("check", "-f", "json").stdout)
    assert check["ok"], check
    # The installed husk finds its vsock backend where the host has no vhost-vsock.
    if not os.path.exists("/dev/vhost-vsock"):
        assert json.loads(husk("--hypervisor", "qemu", "features").stdout)["annotations"]["org.husk.channel"] == "vsock (husk-vsock)"
    # A bundle as a user makes one: husk spec, a rootfs, the process.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    husk("spec", "-b", str(bundle))
    root = bundle / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for a in ("sh", "echo", "cat", "uname", "sleep"):
        os.symlink("busybox", root / "bin" / a)
    with open(bundle / "config.json") as f:
        c = json.load(f)
    c["process"]["terminal"] = False
    c["process"]["args"] = ["sh", "-c", "echo hello from $(uname -r); exit 3"]
    with open(bundle / "config.json", "w") as f:
        json.dump(c, f)
    r = husk("--debug", "run", "-b", str(bundle), "pkg-run", check=False, cwd=str(tmp_path))
    assert r.returncode == 3, r.stderr
    # husk chose its driver (user-mode-linux is a Recommends): UML for
    # this bundle where there is no KVM, else QEMU under KVM.
    driver = re.search(r"hypervisor (\w+): ", r.stderr)
    assert driver, r.stderr
    if driver[1] == "uml":
        assert "no usable KVM" in r.stderr and r.stdout.startswith("hello from "), r.stdout + r.stderr
        # A container that may write files as another user needs QEMU.
        c["process"]["user"] = {"uid": 1000, "gid": 1000}
        with open(bundle / "config.json", "w") as f:
            json.dump(c, f)
        r = husk("--debug", "run", "-b", str(bundle), "pkg-run", check=False, cwd=str(tmp_path))
        assert r.returncode == 3, r.stderr
        assert "hypervisor qemu: " in r.stderr, r.stderr
    # The QEMU guest runs the kernel the package holds.
    assert r.stdout.strip() == f"hello from {kernel_release('/usr/share/husk/vmlinuz')}", r.stdout + r.stderr
    # The first container of its shape made a VM template where an
    # installed husk keeps them; the purge takes it away.
    assert any(n.endswith(".state") for n in os.listdir("/var/cache/husk/templates"))

    # A detached one: its pid is the installed shim, and completion offers its id.
    c["process"]["args"] = ["sleep", "600"]
    with open(bundle / "config.json", "w") as f:
        json.dump(c, f)
    try:
        # Detached, its stdio is the caller's for as long as it runs: not
        # this test's pipes.
        husk("run", "-d", "-b", str(bundle), "pkg-detached", cwd=str(tmp_path), stdin=subprocess.DEVNULL,
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, capture_output=False)
        state = json.loads(husk("state", "pkg-detached").stdout)
        assert state["status"] == "running"
        assert os.readlink(f"/proc/{state['pid']}/exe") == "/usr/libexec/husk/husk-shim"
        assert complete("husk kill pkg-") == ["pkg-detached"]
    finally:
        husk("delete", "-f", "pkg-detached", check=False)
    assert husk("list", "-q").stdout.strip() == ""
    assert not [n for n in os.listdir("/run/husk") if n.startswith("pkg-")]


def complete(line):
    """What bash-completion, as a user's interactive shell loads it, offers
    at the end of `line`."""
    script = f"""
source /usr/share/bash-completion/bash_completion
__load_completion husk || exit 9
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
$(complete -p husk | sed 's/.*-F \\([^ ]*\\) .*/\\1/') husk "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    return run(["bash", "-c", script], env=USER_ENV).stdout.split()


def test_installed_manuals_and_completion(installed):
    # man finds every page by name, and each renders.
    for page in ("husk", "husk-create", "husk-exec", "husk-templates", "husk-config"):
        path = run(["man", "-w", page], env=USER_ENV).stdout.strip()
        assert path.startswith("/usr/share/man/"), path
        text = run(["man", "-P", "cat", page], env={**USER_ENV, "MANWIDTH": "80"}).stdout
        assert text.startswith(page + "("), text[:200]
    assert "--bundle" in run(["man", "-P", "cat", "husk-create"], env=USER_ENV).stdout
    # Completion comes from the installed file, found by name.
    assert complete("husk cr") == ["create"]
    assert complete("husk templates ") == ["list", "rm"]
    assert complete("husk --log-format ") == ["text", "json"]
    assert set(complete("husk run --")) >= {"--bundle", "--detach", "--pid-file", "--console-socket", "--keep"}
    assert complete("husk kill x SIGKI") == ["KILL"]


def test_purge_leaves_nothing(installed):
    """Last (pytest keeps file order). The templates the run above made are
    there; the purge takes them, the configuration and every file away."""
    assert os.listdir("/var/cache/husk/templates")
    run(["apt-get", "purge", "-y", "-q", "husk"], env={**USER_ENV, "DEBIAN_FRONTEND": "noninteractive"})
    for p in INSTALLED + ["/usr/libexec/husk", "/usr/share/husk", "/etc/husk", "/var/cache/husk"]:
        assert not os.path.lexists(p), p
    assert run(["dpkg-query", "-W", "-f", "${Status}", "husk"], check=False).stdout in ("", "unknown ok not-installed")
