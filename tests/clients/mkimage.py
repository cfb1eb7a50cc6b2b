#!/usr/bin/env python3
"""Build the test image offline: a busybox rootfs (Debian's busybox-static)
as a plain tarball, for `podman import` / `docker import`, or as an OCI
image layout archive for `ctr image import`. One builder for every client
suite: there is no registry to pull from.

usage: mkimage.py rootfs-tar OUT.tar
       mkimage.py oci-archive OUT.tar NAME:TAG
"""
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
EPOCH = 0  # reproducible: every entry has the same mtime


def _add(tar, name, data=None, mode=0o644, kind=tarfile.REGTYPE, link=""):
    ti = tarfile.TarInfo(name)
    ti.mtime = EPOCH
    ti.mode = mode
    ti.type = kind
    ti.linkname = link
    if data is not None:
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))
    else:
        tar.addfile(ti)


def rootfs_tar_bytes():
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "var", "home", "data"):
            _add(tar, d, mode=0o1777 if d == "tmp" else 0o755, kind=tarfile.DIRTYPE)
        with open(BUSYBOX, "rb") as f:
            _add(tar, "bin/busybox", f.read(), mode=0o755)
        for a in sorted(applets):
            if a != "busybox":
                _add(tar, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox")
        _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
                                b"nobody:x:65534:65534:nobody:/:/bin/sh\n")
        _add(tar, "etc/group", b"root:x:0:\nwheel:x:10:\nuser:x:1000:\nnogroup:x:65534:\n")
        _add(tar, "www", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "www/index.html", b"hello from husk\n")
    return buf.getvalue()


def oci_archive(out, ref, cmd=("sh",)):
    """An OCI image layout (index.json, blobs/sha256/...) in a tarball."""
    layer = gzip.compress(rootfs_tar_bytes(), mtime=EPOCH)
    diff_id = hashlib.sha256(gzip.decompress(layer)).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd)},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }, sort_keys=True).encode()
    blobs = {}

    def blob(data, media):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return {"mediaType": media, "digest": f"sha256:{d}", "size": len(data)}
    cfg = blob(config, "application/vnd.oci.image.config.v1+json")
    lay = blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": cfg, "layers": [lay]}, sort_keys=True).encode()
    man = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    man["annotations"] = {"org.opencontainers.image.ref.name": ref.split(":")[-1],
                          "io.containerd.image.name": ref}
    index = json.dumps({"schemaVersion": 2, "manifests": [man]}, sort_keys=True).encode()
    with tarfile.open(out, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _add(tar, "index.json", index)
        _add(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
        _add(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
        for d, data in sorted(blobs.items()):
            _add(tar, f"blobs/sha256/{d}", data)


def main(argv):
    if len(argv) >= 3 and argv[1] == "rootfs-tar":
        with open(argv[2], "wb") as f:
            f.write(rootfs_tar_bytes())
    elif len(argv) >= 4 and argv[1] == "oci-archive":
        oci_archive(argv[2], argv[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
