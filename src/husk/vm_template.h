// VM templates: a guest booted once to its agent, saved (the VMM's
// migration stream), and restored for each later container of the same
// shape instead of booting (docs/design.md, "VM templates"). This file is
// the store: where templates live, their names, making one safely when
// several shims race, using one, dropping one, and the bound on their
// size. What a shape is, the driver says (Hypervisor::template_shape).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk::templates {

// $HUSK_TEMPLATE_DIR, else /var/cache/husk/templates (rootless:
// $XDG_CACHE_HOME/husk/templates, or ~/.cache/husk/templates). Made 0700;
// every file in it is 0600.
std::string dir();

// Whether this container may use (and make) templates, and why not: the
// annotation org.husk.template ("off"/"on"), else $HUSK_TEMPLATES ("0",
// "off"), else the config file's `templates`. A bad value is an error.
struct Choice {
    bool on = true;
    std::string why;  // when off: who said so
};
Result<Choice> choose(const std::map<std::string, std::string>& annotations, std::optional<bool> config);

// The MAC a template holds NIC `index` with (Capabilities::
// template_holds_nics): locally administered, the same in every
// template, taken over by the container's at attach (proto::Attach::macs).
std::string mac(size_t index);

// The file name stem of a shape: 32 hex digits (two 64-bit FNV-1a hashes).
// The shape's full text is kept beside the state and compared on use, so
// a hash collision is a miss, never a wrong restore.
std::string key_of(const std::string& shape);

// A file a template depends on, as a line of its shape: its real path,
// inode, size and mtime (a rebuilt guest image or a new VMM binary is a
// new template).
std::string file_identity(const std::string& path);
// A VM's files that way: the VMM binary, the kernel, the initrd.
std::string vm_files_identity(const std::string& binary, const std::string& kernel, const std::string& initrd);

// What the store knows of a saved state's bytes (<dir>/<key>.seal): their
// SHA-256, taken from the maker's file as it is published, and the inode,
// size and ctime at which they were last hashed. A template is restored
// only when its bytes are the ones sealed: unchanged since (no write to
// the inode, which would have moved its ctime), or hashed again and the
// same. Anything else (a byte changed after the save, a truncated or
// replaced file, a missing or damaged seal) drops the template: the
// container boots, and makes it again.
struct Seal {
    std::string sha256;  // 64 hex digits
    uint64_t bytes = 0;
    uint64_t ino = 0;       // 0: not hashed since it was given its name
    int64_t ctime_ns = 0;
};
std::string seal_to_json(const Seal& s);
Result<Seal> seal_from_json(const std::string& text);  // strict
// The SHA-256 of what `fd` holds from offset 0 (pread: its offset stays).
Result<std::string> sha256_of(int fd);

struct Entry {
    std::string key;
    std::string state;  // <dir>/<key>.state: the saved VM
    uint64_t bytes = 0;
    int64_t used = 0;   // last made or restored (the seal's mtime, seconds)
    int64_t used_ns = 0;  // the same, to the nanosecond
    std::string shape;  // <dir>/<key>.shape's text
};
// Every template in `d`, most recently used first.
std::vector<Entry> list(const std::string& d);

// The saved template of `shape`, open read-only, its use recorded; nullopt
// when there is none (or its shape text differs). Its bytes are checked
// against its seal first: a template that is not what was saved is
// removed, and the error (EBADMSG) says why. `hashed_ms`, when given, is
// set to how long a hash took (-1: the seal's inode and ctime held).
Result<std::optional<sys::Fd>> open_saved(const std::string& d, const std::string& shape, long* hashed_ms = nullptr);

// A file for the VMM to save into: unnamed until publish() (O_TMPFILE), so
// a maker that dies leaves nothing behind.
Result<sys::Fd> begin_save(const std::string& d);
// fsync it, seal it and give it the shape's name. false: another maker
// published the same shape first (ours is dropped). Then keep the store within
// `max_bytes`, dropping the least recently used others.
Result<bool> publish(const std::string& d, const std::string& shape, int fd, uint64_t max_bytes);

// Drop the template of this key (a failed restore; `husk templates rm`).
void remove(const std::string& d, const std::string& key);
// Drop the least recently used templates but `keep` until at most
// `max_bytes` are left; returns how many went.
size_t prune(const std::string& d, uint64_t max_bytes, const std::string& keep = "");

// What `husk features` and `husk check` say of templates on this host:
// whether new containers use them (the driver can, nothing turns them
// off), why not, and what the store holds.
struct Report {
    bool on = false;
    std::string why;  // when off
    std::string dir;
    size_t count = 0;
    uint64_t bytes = 0;
};
Report report(bool driver_can, std::optional<bool> config);

}  // namespace husk::templates
