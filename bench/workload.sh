#!/bin/sh
# The file-heavy workload bench/fs and bench/drivers time inside a container
# on a Debian 12 rootfs, with /vol/big (64 MiB) on a volume: one line per
# operation ("name milliseconds").
set -e
t() { n=$1; shift; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo "$n $(( (e - s) / 1000000 ))"; }
# Metadata ops from one process (python), so they time the filesystem and
# not 1,000 execs; exec-200 times program starts, which read their binary
# and libraries through the share.
meta() {
    python3 - "$1" <<'PY'
import os, sys
d, op = "/work/small", sys.argv[1]
os.makedirs(d, exist_ok=True)
for i in range(1000):
    if op == "create":
        with open(f"{d}/f{i}", "w") as f:
            f.write(str(i))
    elif op == "rename":
        os.rename(f"{d}/f{i}", f"{d}/g{i}")
    else:
        os.unlink(f"{d}/g{i}")
PY
}
execs() { i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i + 1)); done; }
t cpu-only python3 -c 'sum(i * i for i in range(300000))'
t python-imports python3 -c 'import json, sqlite3, email, http.client, xml.etree.ElementTree, argparse, decimal, asyncio, unittest, csv, logging, urllib.request'
t find-usr find /usr
t stat-usr find /usr -printf '%s %m %u\n'
t read-small-files tar cf - /usr/lib/python3.11
t create-1000 meta create
t rename-1000 meta rename
t unlink-1000 meta unlink
t exec-200 execs
t sqlite-200-commits python3 -c '
import sqlite3
c = sqlite3.connect("/work/b.db")
c.execute("create table t(x)")
for i in range(200):
    c.execute("insert into t values (?)", (i,)); c.commit()
'
t write-64M dd if=/dev/zero of=/work/big bs=1M count=64 conv=fsync
t read-64M-volume dd if=/vol/big of=/dev/null bs=1M
rm -f /work/big /work/b.db
