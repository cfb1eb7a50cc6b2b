// Building the container's filesystem in the cloned child: mount options
// as runc reads them, mount points made safely inside the root, the spec's
// mounts in order, /dev, masked and read-only paths (child.h).
#include "guest-agent/child.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "husk/hooks.h"
#include "sys/sys.h"

namespace husk::agent {

using nlohmann::json;

MountFlags parse_mount_options(const std::vector<std::string>& opts) {
    struct F {
        bool clear;
        unsigned long flag;
    };
    static const std::map<std::string, F> flags = {
        {"acl", {false, MS_POSIXACL}},     {"async", {true, MS_SYNCHRONOUS}}, {"atime", {true, MS_NOATIME}},
        {"bind", {false, MS_BIND}},        {"defaults", {false, 0}},          {"dev", {true, MS_NODEV}},
        {"diratime", {true, MS_NODIRATIME}}, {"dirsync", {false, MS_DIRSYNC}}, {"exec", {true, MS_NOEXEC}},
        {"mand", {false, MS_MANDLOCK}},    {"noatime", {false, MS_NOATIME}},  {"nodev", {false, MS_NODEV}},
        {"nodiratime", {false, MS_NODIRATIME}}, {"noexec", {false, MS_NOEXEC}}, {"nomand", {true, MS_MANDLOCK}},
        {"norelatime", {true, MS_RELATIME}}, {"nostrictatime", {true, MS_STRICTATIME}}, {"nosuid", {false, MS_NOSUID}},
        {"rbind", {false, MS_BIND | MS_REC}}, {"relatime", {false, MS_RELATIME}}, {"remount", {false, MS_REMOUNT}},
        {"ro", {false, MS_RDONLY}},        {"rw", {true, MS_RDONLY}},         {"strictatime", {false, MS_STRICTATIME}},
        {"suid", {true, MS_NOSUID}},       {"sync", {false, MS_SYNCHRONOUS}},
    };
    static const std::map<std::string, unsigned long> prop = {
        {"private", MS_PRIVATE},   {"rprivate", MS_PRIVATE | MS_REC},     {"shared", MS_SHARED},
        {"rshared", MS_SHARED | MS_REC}, {"slave", MS_SLAVE},             {"rslave", MS_SLAVE | MS_REC},
        {"unbindable", MS_UNBINDABLE}, {"runbindable", MS_UNBINDABLE | MS_REC},
    };
    MountFlags m;
    for (const auto& o : opts) {
        if (o == "rro") {
            m.flags |= MS_RDONLY;
            m.recursive_ro = true;
        } else if (auto it = flags.find(o); it != flags.end()) {
            if (it->second.clear) {
                m.flags &= ~it->second.flag;
                if (o == "rw") m.clear_ro = true;
            } else {
                m.flags |= it->second.flag;
            }
        } else if (auto p = prop.find(o); p != prop.end()) {
            m.propagation |= p->second;
        } else {
            if (!m.data.empty()) m.data += ",";
            m.data += o;
        }
    }
    return m;
}

namespace {

// Create `dest` (absolute, in the container) as a directory or empty
// file, every component resolved inside the root so symlinks in the
// image cannot point a mount outside it. Returns an O_PATH fd to it.
Result<sys::Fd> make_mountpoint(int root, const std::string& dest, bool file, int depth = 0) {
    if (depth > 40) return fail("mount destination " + dest + ": too many levels of symbolic links", ELOOP);
    std::vector<std::string> parts;
    size_t pos = 0;
    while (pos < dest.size()) {
        size_t e = dest.find('/', pos);
        if (e == std::string::npos) e = dest.size();
        std::string c = dest.substr(pos, e - pos);
        if (c == "..") {
            // In the spec a ".." is refused; in a symlink's target it is
            // resolved lexically, clamped at the container root.
            if (depth == 0) return fail("mount destination " + dest + " contains \"..\"", EINVAL);
            if (!parts.empty()) parts.pop_back();
        } else if (!c.empty() && c != ".") {
            parts.push_back(c);
        }
        pos = e + 1;
    }
    std::string prefix;
    for (size_t i = 0; i < parts.size(); ++i) {
        std::string next = prefix.empty() ? parts[i] : prefix + "/" + parts[i];
        auto fd = sys::open_in_root(root, next, O_PATH);
        if (!fd) {
            if (fd.error().code != ENOENT) return tl::unexpected(fd.error());
            auto parent = TRY(sys::open_in_root(root, prefix, O_PATH | O_DIRECTORY));
            bool last = i + 1 == parts.size();
            // A dangling symlink: create its target, still inside the root.
            char link[4096];
            ssize_t n = ::readlinkat(parent.get(), parts[i].c_str(), link, sizeof link - 1);
            if (n > 0) {
                std::string target(link, size_t(n));
                std::string rest;
                for (size_t j = i + 1; j < parts.size(); ++j) rest += "/" + parts[j];
                std::string base = target[0] == '/' ? "" : "/" + prefix;
                return make_mountpoint(root, base + "/" + target + rest, file, depth + 1);
            }
            if (last && file) {
                int f = ::openat(parent.get(), parts[i].c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
                if (f < 0 && errno != EEXIST) return fail_errno("create " + dest);
                if (f >= 0) ::close(f);
            } else if (::mkdirat(parent.get(), parts[i].c_str(), 0755) < 0 && errno != EEXIST) {
                return fail_errno("mkdir " + next);
            }
        }
        prefix = next;
    }
    return sys::open_in_root(root, prefix, O_PATH);
}

std::string fd_path(const sys::Fd& fd) { return "/proc/self/fd/" + std::to_string(fd.get()); }

// Copy the tree under `from` into `to` (both directory fds): files,
// directories, symlinks, with modes and owners. For tmpcopyup.
Result<void> copy_tree(int from, int to, int depth = 0) {
    if (depth > 64) return fail("tmpcopyup: tree too deep", ELOOP);
    int dup = ::fcntl(from, F_DUPFD_CLOEXEC, 3);
    if (dup < 0) return fail_errno("tmpcopyup: dup");
    DIR* d = ::fdopendir(dup);
    if (!d) {
        ::close(dup);
        return fail_errno("tmpcopyup: opendir");
    }
    std::unique_ptr<DIR, int (*)(DIR*)> guard(d, ::closedir);
    while (auto* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        struct stat st;
        if (::fstatat(from, n.c_str(), &st, AT_SYMLINK_NOFOLLOW) < 0) return fail_errno("tmpcopyup: stat " + n);
        if (S_ISDIR(st.st_mode)) {
            if (::mkdirat(to, n.c_str(), st.st_mode & 07777) < 0 && errno != EEXIST) return fail_errno("tmpcopyup: mkdir " + n);
            sys::Fd s(::openat(from, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            sys::Fd t(::openat(to, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
            if (!s || !t) return fail_errno("tmpcopyup: open " + n);
            TRY(copy_tree(s.get(), t.get(), depth + 1));
        } else if (S_ISLNK(st.st_mode)) {
            char link[4096];
            ssize_t l = ::readlinkat(from, n.c_str(), link, sizeof link - 1);
            if (l < 0) return fail_errno("tmpcopyup: readlink " + n);
            link[l] = 0;
            if (::symlinkat(link, to, n.c_str()) < 0) return fail_errno("tmpcopyup: symlink " + n);
        } else if (S_ISREG(st.st_mode)) {
            sys::Fd s(::openat(from, n.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
            sys::Fd t(::openat(to, n.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 07777));
            if (!s || !t) return fail_errno("tmpcopyup: copy " + n);
            char buf[65536];
            ssize_t r;
            while ((r = ::read(s.get(), buf, sizeof buf)) > 0) TRY(sys::write_all(t.get(), buf, size_t(r)));
            if (r < 0) return fail_errno("tmpcopyup: read " + n);
        } else {
            continue;  // device nodes, fifos and sockets are not copied up
        }
        if (::fchownat(to, n.c_str(), st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) < 0) return fail_errno("tmpcopyup: chown " + n);
        if (!S_ISLNK(st.st_mode) && ::fchmodat(to, n.c_str(), st.st_mode & 07777, 0) < 0)
            return fail_errno("tmpcopyup: chmod " + n);
    }
    return {};
}

constexpr unsigned long kPerMountFlags =
    MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME;

// "/dev", "//dev/", "/dev/." all name the container's /dev.
bool is_dev(const std::string& dest) {
    std::string d;
    for (size_t pos = 0; pos < dest.size();) {
        size_t e = dest.find('/', pos);
        if (e == std::string::npos) e = dest.size();
        std::string c = dest.substr(pos, e - pos);
        if (!c.empty() && c != ".") d += "/" + c;
        pos = e + 1;
    }
    return d == "/dev";
}

// One node at `path`, with exactly `mode` (whatever the umask) and owner.
Result<void> make_node(const std::string& path, mode_t kind, mode_t mode, dev_t dev, uid_t uid = 0, gid_t gid = 0) {
    if (::mknod(path.c_str(), kind | mode, dev) < 0) return fail_errno("mknod " + path);
    if (::chmod(path.c_str(), mode) < 0) return fail_errno("chmod " + path);
    if (::chown(path.c_str(), uid, gid) < 0) return fail_errno("chown " + path);
    return {};
}

}  // namespace

// A tmpfs, and anything mounted at /dev, is mounted writable first (as
// runc's mountPropagate does): a tmpfs gets its mode and copy-up, /dev its
// nodes and the mounts under it. A tmpfs elsewhere goes read-only right
// after; /dev once the rest of it is built (`dev_ro`: the flags to
// remount it with).
Result<void> do_mount(int root, const proto::Mount& m, unsigned long& dev_ro) {
    const std::string& dest = m.destination;
    std::string type = m.type;
    std::vector<std::string> opts = m.options;
    // runc's extension: a tmpfs starts with what the image had there.
    bool copyup = std::find(opts.begin(), opts.end(), "tmpcopyup") != opts.end();
    opts.erase(std::remove(opts.begin(), opts.end(), "tmpcopyup"), opts.end());
    MountFlags mf = parse_mount_options(opts);
    if (m.share) {
        std::string src = std::string(kShareMount) + "/" + *m.share;
        bool file = !sys::is_dir(src);
        auto target = TRY(make_mountpoint(root, dest, file));
        unsigned long bflags = MS_BIND | (mf.flags & MS_REC);
        TRY(sys::mount(src, fd_path(target), "", bflags));
        // The host's mounts under an rbind source are one filesystem with
        // it here: bound again each (parents first), so that a read-only
        // top leaves them writable, as the kernel's bind does on the host.
        for (const auto& sub : m.submounts) {
            if (sub.empty() || sub[0] == '/' || sub.find("..") != std::string::npos) continue;
            auto at = sys::open_in_root(root, dest + "/" + sub, O_PATH);
            if (at) TRY(sys::mount(src + "/" + sub, fd_path(*at), "", MS_BIND));
        }
        // Reopen: the fd names the covered directory, not the new mount.
        auto mounted = TRY(sys::open_in_root(root, dest, O_PATH));
        unsigned long rflags = mf.flags & ~(MS_BIND | MS_REC | MS_REMOUNT);
        if (rflags) TRY(sys::mount("", fd_path(mounted), "", MS_BIND | MS_REMOUNT | rflags));
        if (mf.propagation) TRY(sys::mount("", fd_path(mounted), "", mf.propagation));
        return {};
    }
    std::string source = m.source;
    if (type == "cgroup") {
        // The guest runs cgroup v2 only, whatever the host has.
        type = "cgroup2";
        source = "cgroup2";
    }
    // runc: a tmpfs over a directory that was there takes its mode.
    std::optional<mode_t> was_mode;
    if (type == "tmpfs")
        if (auto existing = sys::open_in_root(root, dest, O_PATH); existing) {
            struct stat st;
            if (::fstat(existing->get(), &st) == 0 && S_ISDIR(st.st_mode)) was_mode = st.st_mode & 07777;
        }
    auto target = TRY(make_mountpoint(root, dest, false));
    sys::Fd below;  // what the tmpfs is about to cover, still readable through this
    if (copyup && type == "tmpfs") below = TRY(sys::open(fd_path(target), O_RDONLY | O_DIRECTORY));
    unsigned long flags = mf.flags & ~MS_REMOUNT;
    bool dev = is_dev(dest);
    bool ro_later = (flags & MS_RDONLY) && (type == "tmpfs" || dev);
    if (ro_later) flags &= ~MS_RDONLY;
    TRY(sys::mount(source.empty() ? type : source, fd_path(target), type, flags, mf.data));
    if (below) {
        auto top = TRY(sys::open_in_root(root, dest, O_RDONLY | O_DIRECTORY));
        TRY(copy_tree(below.get(), top.get()));
    }
    if (was_mode) {
        auto top = TRY(sys::open_in_root(root, dest, O_RDONLY | O_DIRECTORY));
        if (::fchmod(top.get(), *was_mode) < 0) return fail_errno("chmod " + dest);
    }
    if (ro_later || mf.propagation) {
        auto mounted = TRY(sys::open_in_root(root, dest, O_PATH));
        // A bind remount sets every per-mount flag: keep the mount's own.
        unsigned long ro = MS_REMOUNT | MS_BIND | MS_RDONLY | (flags & kPerMountFlags);
        if (ro_later && dev) dev_ro = ro;
        else if (ro_later) TRY(sys::mount("", fd_path(mounted), "", ro));
        if (mf.propagation) TRY(sys::mount("", fd_path(mounted), "", mf.propagation));
    }
    return {};
}

// What runc puts in a tmpfs /dev: the standard nodes and links.
Result<void> populate_dev() {
    struct Node {
        const char* name;
        unsigned maj, min;
    };
    static const Node nodes[] = {{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
                                 {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
    for (auto& n : nodes) {
        std::string p = std::string("/dev/") + n.name;
        if (!sys::exists(p)) TRY(make_node(p, S_IFCHR, 0666, makedev(n.maj, n.min)));  // a spec mount may be there
    }
    static const std::pair<const char*, const char*> links[] = {
        {"/proc/self/fd", "/dev/fd"},          {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"},
        {"/proc/self/fd/2", "/dev/stderr"},    {"pts/ptmx", "/dev/ptmx"},
    };
    for (auto& [to, from] : links)
        if (::symlink(to, from) < 0 && errno != EEXIST) return fail_errno(std::string("symlink ") + from);
    if (sys::exists("/proc/kcore") && ::symlink("/proc/kcore", "/dev/core") < 0 && errno != EEXIST)
        return fail_errno("symlink /dev/core");
    return {};
}

// linux.devices: made after pivot_root, so every path is the container's.
Result<void> make_devices(const std::vector<proto::Device>& devices) {
    for (const auto& d : devices) {
        const std::string& path = d.path;
        mode_t kind = d.type == "b" ? S_IFBLK : d.type == "p" ? S_IFIFO : S_IFCHR;
        TRY(sys::mkdir_p(sys::dirname(path), 0755));
        ::unlink(path.c_str());  // runc replaces what the image had there
        TRY(make_node(path, kind, mode_t(d.file_mode.value_or(0666)), makedev(unsigned(d.major), unsigned(d.minor)), d.uid,
                      d.gid));
    }
    return {};
}

Result<void> mask_path(const std::string& p) {
    if (!sys::exists(p)) return {};
    if (sys::is_dir(p)) return sys::mount("tmpfs", p, "tmpfs", MS_RDONLY, "size=0k");
    return sys::mount("/dev/null", p, "", MS_BIND);
}

Result<void> readonly_path(const std::string& p) {
    if (!sys::exists(p)) return {};
    TRY(sys::mount(p, p, "", MS_BIND | MS_REC));
    return sys::mount("", p, "", MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC);
}

}  // namespace husk::agent
