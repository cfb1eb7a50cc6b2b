#include "guest-agent/container.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/openat2.h>
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

int clone_flags(const json& params) {
    int f = CLONE_NEWNS;
    for (const auto& n : params.value("namespaces", json::array())) {
        std::string t = n.get<std::string>();
        if (t == "pid") f |= CLONE_NEWPID;
        else if (t == "uts") f |= CLONE_NEWUTS;
        else if (t == "ipc") f |= CLONE_NEWIPC;
    }
    return f;
}

namespace {

[[noreturn]] void die(int sync_fd, const std::string& msg) {
    std::string m = "E" + msg;
    (void)!::write(sync_fd, m.data(), m.size());
    _exit(1);
}

#define CHECK(expr)                                    \
    ({                                                 \
        auto _r = (expr);                              \
        if (!_r) die(sync_fd, _r.error().message);     \
        ::husk::detail::unwrap(std::move(_r));         \
    })

Result<sys::Fd> openat2_in_root(int root, const std::string& rel, int flags) {
    struct open_how how;
    std::memset(&how, 0, sizeof how);
    how.flags = uint64_t(flags | O_CLOEXEC);
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    std::string p = rel.empty() ? "." : rel;
    int fd = int(::syscall(SYS_openat2, root, p.c_str(), &how, sizeof how));
    if (fd < 0) return fail_errno("open " + rel + " in container root");
    return sys::Fd(fd);
}

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
        auto fd = openat2_in_root(root, next, O_PATH);
        if (!fd) {
            if (fd.error().code != ENOENT) return tl::unexpected(fd.error());
            auto parent = TRY(openat2_in_root(root, prefix, O_PATH | O_DIRECTORY));
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
    return openat2_in_root(root, prefix, O_PATH);
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

// A tmpfs, and anything mounted at /dev, is mounted writable first (as
// runc's mountPropagate does): a tmpfs gets its mode and copy-up, /dev its
// nodes and the mounts under it. A tmpfs elsewhere goes read-only right
// after; /dev once the rest of it is built (`dev_ro`: the flags to
// remount it with).
Result<void> do_mount(int root, const json& m, unsigned long& dev_ro) {
    std::string dest = m.at("destination");
    std::string type = m.value("type", "");
    std::vector<std::string> opts = m.value("options", std::vector<std::string>{});
    // runc's extension: a tmpfs starts with what the image had there.
    bool copyup = std::find(opts.begin(), opts.end(), "tmpcopyup") != opts.end();
    opts.erase(std::remove(opts.begin(), opts.end(), "tmpcopyup"), opts.end());
    MountFlags mf = parse_mount_options(opts);
    if (m.contains("share")) {
        std::string src = std::string(kShareMount) + "/" + m["share"].get<std::string>();
        bool file = !sys::is_dir(src);
        auto target = TRY(make_mountpoint(root, dest, file));
        unsigned long bflags = MS_BIND | (mf.flags & MS_REC);
        TRY(sys::mount(src, fd_path(target), "", bflags));
        // The host's mounts under an rbind source are one filesystem with
        // it here: bound again each (parents first), so that a read-only
        // top leaves them writable, as the kernel's bind does on the host.
        for (const auto& sub : m.value("submounts", std::vector<std::string>{})) {
            if (sub.empty() || sub[0] == '/' || sub.find("..") != std::string::npos) continue;
            auto at = openat2_in_root(root, dest + "/" + sub, O_PATH);
            if (at) TRY(sys::mount(src + "/" + sub, fd_path(*at), "", MS_BIND));
        }
        // Reopen: the fd names the covered directory, not the new mount.
        auto mounted = TRY(openat2_in_root(root, dest, O_PATH));
        unsigned long rflags = mf.flags & ~(MS_BIND | MS_REC | MS_REMOUNT);
        if (rflags) TRY(sys::mount("", fd_path(mounted), "", MS_BIND | MS_REMOUNT | rflags));
        if (mf.propagation) TRY(sys::mount("", fd_path(mounted), "", mf.propagation));
        return {};
    }
    std::string source = m.value("source", "");
    if (type == "cgroup") {
        // The guest runs cgroup v2 only, whatever the host has.
        type = "cgroup2";
        source = "cgroup2";
    }
    // runc: a tmpfs over a directory that was there takes its mode.
    std::optional<mode_t> was_mode;
    if (type == "tmpfs")
        if (auto existing = openat2_in_root(root, dest, O_PATH); existing) {
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
        auto top = TRY(openat2_in_root(root, dest, O_RDONLY | O_DIRECTORY));
        TRY(copy_tree(below.get(), top.get()));
    }
    if (was_mode) {
        auto top = TRY(openat2_in_root(root, dest, O_RDONLY | O_DIRECTORY));
        if (::fchmod(top.get(), *was_mode) < 0) return fail_errno("chmod " + dest);
    }
    if (ro_later || mf.propagation) {
        auto mounted = TRY(openat2_in_root(root, dest, O_PATH));
        // A bind remount sets every per-mount flag: keep the mount's own.
        unsigned long ro = MS_REMOUNT | MS_BIND | MS_RDONLY | (flags & kPerMountFlags);
        if (ro_later && dev) dev_ro = ro;
        else if (ro_later) TRY(sys::mount("", fd_path(mounted), "", ro));
        if (mf.propagation) TRY(sys::mount("", fd_path(mounted), "", mf.propagation));
    }
    return {};
}

// One node at `path`, with exactly `mode` (whatever the umask) and owner.
Result<void> make_node(const std::string& path, mode_t kind, mode_t mode, dev_t dev, uid_t uid = 0, gid_t gid = 0) {
    if (::mknod(path.c_str(), kind | mode, dev) < 0) return fail_errno("mknod " + path);
    if (::chmod(path.c_str(), mode) < 0) return fail_errno("chmod " + path);
    if (::chown(path.c_str(), uid, gid) < 0) return fail_errno("chown " + path);
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
Result<void> make_devices(const json& devices) {
    for (const auto& d : devices) {
        std::string path = d.at("path");
        std::string type = d.at("type");
        mode_t kind = type == "b" ? S_IFBLK : type == "p" ? S_IFIFO : S_IFCHR;
        TRY(sys::mkdir_p(sys::dirname(path), 0755));
        ::unlink(path.c_str());  // runc replaces what the image had there
        TRY(make_node(path, kind, mode_t(d.value("file_mode", 0666u)), makedev(d.value("major", 0u), d.value("minor", 0u)),
                      d.value("uid", 0u), d.value("gid", 0u)));
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

// execvp's search, but with the container's PATH, done before start so a
// missing binary fails `create` as runc's does.
Result<std::string> find_executable(const std::string& arg0, const std::vector<std::string>& env) {
    if (arg0.find('/') != std::string::npos) {
        if (::access(arg0.c_str(), X_OK) < 0) return fail_errno("exec: \"" + arg0 + "\"");
        return arg0;
    }
    std::string path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (const auto& e : env)
        if (e.rfind("PATH=", 0) == 0) path = e.substr(5);
    size_t pos = 0;
    while (pos <= path.size()) {
        size_t e = path.find(':', pos);
        if (e == std::string::npos) e = path.size();
        std::string dir = path.substr(pos, e - pos);
        if (dir.empty()) dir = ".";
        std::string c = dir + "/" + arg0;
        struct stat st;
        if (::stat(c.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(c.c_str(), X_OK) == 0) return c;
        pos = e + 1;
    }
    return fail("exec: \"" + arg0 + "\": executable file not found in $PATH", ENOENT);
}

}  // namespace

namespace {

Result<void> apply_bounding(const std::vector<int>& keep) {
    for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) {
        if (std::find(keep.begin(), keep.end(), cap) != keep.end()) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) return fail_errno("drop bounding cap " + std::to_string(cap));
    }
    return {};
}

Result<void> apply_caps(const json& caps) {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    auto fill = [&](const char* set, uint32_t __user_cap_data_struct::*field) {
        for (int cap : caps.value(set, std::vector<int>{})) {
            if (cap < 0 || cap > 63) continue;
            data[cap / 32].*field |= 1u << (cap % 32);
        }
    };
    fill("effective", &__user_cap_data_struct::effective);
    fill("permitted", &__user_cap_data_struct::permitted);
    fill("inheritable", &__user_cap_data_struct::inheritable);
    if (::syscall(SYS_capset, &hdr, data) < 0) return fail_errno("capset");
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    // The kernel raises an ambient cap only if it is permitted and
    // inheritable. runc (1.1) tries each and ignores the refusals, so the
    // default spec (ambient caps, no inheritable set: `runc spec`, `husk
    // spec`) runs with CapAmb 0 instead of failing.
    for (int cap : caps.value("ambient", std::vector<int>{}))
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 && errno != EPERM)
            return fail_errno("raise ambient cap " + std::to_string(cap));
    return {};
}

uint32_t seccomp_action(const std::string& name, uint32_t errno_ret) {
    if (name == "SCMP_ACT_KILL" || name == "SCMP_ACT_KILL_THREAD") return SCMP_ACT_KILL_THREAD;
    if (name == "SCMP_ACT_KILL_PROCESS") return SCMP_ACT_KILL_PROCESS;
    if (name == "SCMP_ACT_TRAP") return SCMP_ACT_TRAP;
    if (name == "SCMP_ACT_ERRNO") return SCMP_ACT_ERRNO(errno_ret);
    if (name == "SCMP_ACT_TRACE") return SCMP_ACT_TRACE(errno_ret);
    if (name == "SCMP_ACT_LOG") return SCMP_ACT_LOG;
    return SCMP_ACT_ALLOW;  // the host checked the name
}

// Whether two of a rule's conditions compare the same argument.
bool seccomp_args_repeat(const std::vector<scmp_arg_cmp>& args) {
    for (size_t i = 0; i < args.size(); ++i)
        for (size_t j = i + 1; j < args.size(); ++j)
            if (args[i].arg == args[j].arg) return true;
    return false;
}

// linux.seccomp with libseccomp, as runc builds it: unknown syscall names
// are skipped (profiles name syscalls of newer kernels), rules equal to the
// default action are redundant and skipped.
Result<void> load_seccomp(const json& sec) {
    uint32_t def_errno = sec.value("defaultErrnoRet", uint32_t(EPERM));
    uint32_t def = seccomp_action(sec.at("defaultAction").get<std::string>(), def_errno);
    scmp_filter_ctx ctx = seccomp_init(def);
    if (!ctx) return fail("seccomp: init failed", EINVAL);
    struct Release {
        scmp_filter_ctx c;
        ~Release() { seccomp_release(c); }
    } release{ctx};
    // libseccomp sets no_new_privs on load unless told not to; whether the
    // process has it is process.noNewPrivileges's call alone.
    if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0); rc < 0)
        return fail(std::string("seccomp: ") + strerror(-rc), EINVAL);
    for (const auto& a : sec.value("architectures", std::vector<std::string>{})) {
        std::string n = a.rfind("SCMP_ARCH_", 0) == 0 ? a.substr(10) : a;
        for (auto& ch : n) ch = char(std::tolower(static_cast<unsigned char>(ch)));
        uint32_t arch = seccomp_arch_resolve_name(n.c_str());
        if (!arch) continue;  // an architecture this libseccomp does not know
        int rc = seccomp_arch_add(ctx, arch);
        if (rc < 0 && rc != -EEXIST) return fail("seccomp: architecture " + a + ": " + strerror(-rc), EINVAL);
    }
    for (const auto& f : sec.value("flags", std::vector<std::string>{})) {
        int rc = 0;
        if (f == "SECCOMP_FILTER_FLAG_TSYNC") rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
        else if (f == "SECCOMP_FILTER_FLAG_LOG") rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_LOG, 1);
        else if (f == "SECCOMP_FILTER_FLAG_SPEC_ALLOW") rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_SSB, 1);
        else return fail("seccomp: unsupported flag " + f, EINVAL);
        if (rc < 0) return fail("seccomp: flag " + f + ": " + strerror(-rc), EINVAL);
    }
    static const std::map<std::string, scmp_compare> ops = {
        {"SCMP_CMP_NE", SCMP_CMP_NE}, {"SCMP_CMP_LT", SCMP_CMP_LT}, {"SCMP_CMP_LE", SCMP_CMP_LE},
        {"SCMP_CMP_EQ", SCMP_CMP_EQ}, {"SCMP_CMP_GE", SCMP_CMP_GE}, {"SCMP_CMP_GT", SCMP_CMP_GT},
        {"SCMP_CMP_MASKED_EQ", SCMP_CMP_MASKED_EQ}};
    for (const auto& rule : sec.value("syscalls", json::array())) {
        uint32_t act = seccomp_action(rule.at("action").get<std::string>(), rule.value("errnoRet", uint32_t(EPERM)));
        if (act == def) continue;
        std::vector<scmp_arg_cmp> args;
        for (const auto& a : rule.value("args", json::array()))
            args.push_back({a.at("index").get<unsigned>(), ops.at(a.at("op").get<std::string>()),
                            a.at("value").get<uint64_t>(), a.value("valueTwo", uint64_t(0))});
        // libseccomp refuses two comparisons of one argument in a rule;
        // runc then adds each condition as a rule of its own (so they
        // match as alternatives), and so do we.
        std::vector<std::vector<scmp_arg_cmp>> rules;
        if (seccomp_args_repeat(args))
            for (const auto& a : args) rules.push_back({a});
        else
            rules.push_back(args);
        for (const auto& name : rule.at("names")) {
            int nr = seccomp_syscall_resolve_name(name.get<std::string>().c_str());
            if (nr == __NR_SCMP_ERROR) continue;
            for (const auto& r : rules) {
                int rc = seccomp_rule_add_array(ctx, act, nr, unsigned(r.size()), r.data());
                if (rc < 0) return fail("seccomp: rule for " + name.get<std::string>() + ": " + strerror(-rc), EINVAL);
            }
        }
    }
    int rc = seccomp_load(ctx);
    if (rc < 0) return fail(std::string("seccomp: load: ") + strerror(-rc), EINVAL);
    return {};
}

// The home directory of `uid` in the container's /etc/passwd, or "/".
std::string home_of(uid_t uid) {
    auto text = sys::read_file("/etc/passwd", 1 << 20).value_or("");
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        std::vector<std::string> f;
        size_t a = pos;
        for (size_t i = pos; i <= end; ++i)
            if (i == end || text[i] == ':') {
                f.push_back(text.substr(a, i - a));
                a = i + 1;
            }
        if (f.size() >= 6 && f[2] == std::to_string(uid) && !f[5].empty()) return f[5];
        pos = end + 1;
    }
    return "/";
}

// runc's fixStdioPermissions: stdio (a terminal above all) belongs to the
// process's user, so that it can use its console; the group stays (devpts
// gives its own). /dev/null and what cannot be changed are left alone.
void fix_stdio_owner(uid_t uid) {
    struct stat null_st{};
    bool have_null = ::stat("/dev/null", &null_st) == 0;
    for (int fd = 0; fd <= 2; ++fd) {
        struct stat st;
        if (::fstat(fd, &st) < 0 || st.st_uid == uid) continue;
        if (have_null && S_ISCHR(st.st_mode) && st.st_rdev == null_st.st_rdev) continue;
        (void)::fchown(fd, uid, st.st_gid);
    }
}

void reset_signals() {
    // The agent blocks signals for its signalfd; the workload must not inherit that.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
}

// What every process of the container goes through once it is inside the
// container's namespaces and root: stdio (pipes, or a pty from the
// container's own devpts), credentials, cwd, then "R" (with the pty master
// attached), wait for "S", execve.
[[noreturn]] void run_process(const json& proc, const json& seccomp, int sync_fd, const Stdio& io,
                              const json& start_hooks = json()) {
    setsid();
    // Preserved fds first, to 3.. as runc passes them: every fd that must
    // outlive this (the sync socket, stdio's pipes) moves above them, and
    // whatever of the agent's sits at 3.. is replaced (it is close-on-exec).
    Stdio moved = io;
    if (!io.extra.empty()) {
        int top = 3 + int(io.extra.size());
        auto lift = [&](int& f) {
            if (f >= 0 && (f = fcntl(f, F_DUPFD_CLOEXEC, top + 10)) < 0) die(sync_fd, "dup preserved fds failed");
        };
        lift(sync_fd);
        lift(moved.in);
        lift(moved.out);
        lift(moved.err);
        for (int& f : moved.extra) lift(f);
        for (size_t i = 0; i < moved.extra.size(); ++i)
            if (dup2(moved.extra[i], int(3 + i)) < 0) die(sync_fd, "dup2 preserved fd failed");
    }
    std::optional<sys::Pty> pty;
    if (proc.value("terminal", false)) {
        auto p = sys::open_pty("/dev/ptmx");
        if (!p) die(sync_fd, "terminal: " + p.error().message + " (the container needs /dev/pts and /dev/ptmx)");
        pty = std::move(*p);
        if (::ioctl(pty->slave.get(), TIOCSCTTY, 0) < 0) die(sync_fd, std::string("terminal: TIOCSCTTY: ") + strerror(errno));
        for (int i = 0; i < 3; ++i)
            if (dup2(pty->slave.get(), i) < 0) die(sync_fd, "dup2 terminal failed");
    } else {
        // Move out of the way first: the pipes may themselves be fds 0-2.
        int fds[3] = {moved.in, moved.out, moved.err};
        for (int& f : fds)
            if ((f = fcntl(f, F_DUPFD_CLOEXEC, 10)) < 0) die(sync_fd, "dup stdio failed");
        for (int i = 0; i < 3; ++i)
            if (dup2(fds[i], i) < 0) die(sync_fd, "dup2 stdio failed");
    }

    std::string cwd = proc.value("cwd", "/");
    if (proc.contains("umask")) ::umask(mode_t(proc["umask"].get<uint32_t>()));
    else ::umask(022);

    // runc's order: limits while still privileged; seccomp now if it cannot
    // wait for no_new_privs (loading it then needs CAP_SYS_ADMIN); bounding
    // set; user with caps kept; the configured caps; cwd; no_new_privs;
    // seccomp last when no_new_privs lets it load unprivileged.
    for (const auto& l : proc.value("rlimits", json::array())) {
        struct rlimit rl{l.at("soft").get<rlim_t>(), l.at("hard").get<rlim_t>()};
        if (::setrlimit(l.at("resource").get<int>(), &rl) < 0) die(sync_fd, std::string("setrlimit: ") + strerror(errno));
    }
    if (proc.contains("oom_score_adj"))
        CHECK(sys::write_file("/proc/self/oom_score_adj", std::to_string(proc["oom_score_adj"].get<int>())));
    auto env = proc.value("env", std::vector<std::string>{});
    if (std::none_of(env.begin(), env.end(), [](const std::string& e) { return e.rfind("HOME=", 0) == 0; }))
        env.push_back("HOME=" + home_of(proc.value("uid", 0u)));  // as runc, from the container's passwd
    bool nnp = proc.value("no_new_privileges", false);
    if (!seccomp.is_null() && !nnp) CHECK(load_seccomp(seccomp));
    // The cwd as runc enters it: first with every privilege (a directory
    // root may enter but the user may not still works), again as the
    // user if that was refused (one the user may enter but root, lacking
    // CAP_DAC_OVERRIDE in a user namespace, may not).
    bool cwd_later = false;
    if (::chdir(cwd.c_str()) < 0) {
        if (errno != EACCES && errno != EPERM) die(sync_fd, "chdir to cwd " + cwd + ": " + strerror(errno));
        cwd_later = true;
    }
    bool caps = proc.contains("capabilities");
    if (caps) {
        CHECK(apply_bounding(proc["capabilities"].value("bounding", std::vector<int>{})));
        if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) die(sync_fd, std::string("keepcaps: ") + strerror(errno));
    }

    std::vector<gid_t> groups;
    for (auto g : proc.value("additional_gids", std::vector<uint32_t>{})) groups.push_back(g);
    uid_t uid = proc.value("uid", 0u);
    gid_t gid = proc.value("gid", 0u);
    fix_stdio_owner(uid);
    if (::setgroups(groups.size(), groups.data()) < 0) die(sync_fd, std::string("setgroups: ") + strerror(errno));
    if (::setresgid(gid, gid, gid) < 0) die(sync_fd, std::string("setgid: ") + strerror(errno));
    if (::setresuid(uid, uid, uid) < 0) die(sync_fd, std::string("setuid: ") + strerror(errno));
    if (cwd_later && ::chdir(cwd.c_str()) < 0) die(sync_fd, "chdir to cwd " + cwd + ": " + strerror(errno));
    if (caps) {
        prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
        CHECK(apply_caps(proc["capabilities"]));
    }
    if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die(sync_fd, std::string("no_new_privs: ") + strerror(errno));

    auto args = proc.at("args").get<std::vector<std::string>>();
    std::string exe = CHECK(find_executable(args[0], env));

    std::vector<int> pass;
    if (pty) pass.push_back(pty->master.get());
    if (!sys::send_fds(sync_fd, "R", pass)) _exit(1);
    pty.reset();  // the agent holds the master now
    char c = 0;
    if (::read(sync_fd, &c, 1) != 1 || c != 'S') _exit(1);  // deleted before start
    // Nothing of the agent's past exec but stdio and the preserved fds,
    // whatever was opened without O_CLOEXEC (runc's CVE-2024-21626 was a
    // leaked fd); before seccomp, which may refuse close_range.
    sys::cloexec_from(3 + int(io.extra.size()));
    if (!seccomp.is_null() && nnp) CHECK(load_seccomp(seccomp));
    // startContainer hooks: as runc, once the process is what it will be
    // (its seccomp filter included), right before its program starts.
    if (!start_hooks.is_null()) {
        auto r = run_hooks(hooks_from_json(start_hooks["hooks"]), "startContainer", start_hooks["state"]);
        if (!r) die(sync_fd, r.error().message);
    }

    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    execve(exe.c_str(), argv.data(), envp.data());
    die(sync_fd, "exec " + exe + ": " + strerror(errno));
}

}  // namespace

// The user namespace comes last, once the container is built: mounts,
// device nodes, sysctls and pivot_root were done as the guest's root, as
// runc's init does them before it drops into the namespace's view. The
// container then gets mount, uts and cgroup namespaces of its own inside
// it (copies of what was built, every mount locked as it is), so its root
// may mount, set the hostname and so on there, as in runc's containers.
// The agent writes the id maps between "U" and "M".
void enter_userns(const json& params, int sync_fd) {
    if (::unshare(CLONE_NEWUSER) < 0) die(sync_fd, std::string("unshare user namespace: ") + strerror(errno));
    char c = 0;
    if (::write(sync_fd, "U", 1) != 1 || ::read(sync_fd, &c, 1) != 1 || c != 'M') _exit(1);
    if (::setresgid(0, 0, 0) < 0 || ::setresuid(0, 0, 0) < 0)
        die(sync_fd, std::string("become root of the user namespace: ") + strerror(errno));
    int again = CLONE_NEWNS;
    for (const auto& n : params.value("namespaces", json::array())) {
        if (n == "uts") again |= CLONE_NEWUTS;
        if (n == "cgroup") again |= CLONE_NEWCGROUP;
    }
    if (::unshare(again) < 0) die(sync_fd, std::string("unshare in the user namespace: ") + strerror(errno));
}

void container_init(const json& params, const std::vector<std::pair<int, int>>& joins, int sync_fd, const Stdio& io) {
    reset_signals();
    for (auto [fd, flag] : joins) {
        if (::setns(fd, flag) < 0) die(sync_fd, std::string("join a namespace of the pod: ") + strerror(errno));
        ::close(fd);
    }
    // A new cgroup namespace here, not in clone(): its root must be the
    // container's group, which clone3 placed us in after copying namespaces.
    for (const auto& n : params.value("namespaces", json::array()))
        if (n == "cgroup" && ::unshare(CLONE_NEWCGROUP) < 0) die(sync_fd, std::string("unshare cgroup: ") + strerror(errno));
    const json& proc = params.at("process");
    const json& rootp = params.at("root");

    CHECK(sys::mount("", "/", "", MS_REC | MS_PRIVATE));
    CHECK(sys::mkdir_p(kContainerRoot, 0755));
    std::string share_root = std::string(kShareMount) + "/" + rootp.at("share").get<std::string>();
    CHECK(sys::mount(share_root, kContainerRoot, "", MS_BIND | MS_REC));

    {
        auto root = CHECK(sys::open(kContainerRoot, O_PATH | O_DIRECTORY));
        bool dev_tmpfs = false;
        unsigned long dev_ro = 0;
        for (const auto& m : params.value("mounts", json::array())) {
            auto r = do_mount(root.get(), m, dev_ro);
            if (!r) die(sync_fd, "mount " + m.value("destination", "?") + ": " + r.error().message);
            if (m.value("destination", "") == "/dev" && m.value("type", "") == "tmpfs") dev_tmpfs = true;
        }
        CHECK(sys::chdir(kContainerRoot));
        CHECK(sys::pivot_root(".", "."));
        CHECK(sys::umount(".", MNT_DETACH));
        CHECK(sys::chdir("/"));
        if (dev_tmpfs) CHECK(populate_dev());
        CHECK(make_devices(params.value("devices", json::array())));
        if (dev_ro) CHECK(sys::mount("", "/dev", "", dev_ro));
    }

    std::string hostname = params.value("hostname", "");
    if (!hostname.empty() && sethostname(hostname.c_str(), hostname.size()) < 0)
        die(sync_fd, std::string("sethostname: ") + strerror(errno));
    // The guest kernel is the container's own: every sysctl is its to set.
    for (const auto& [k, v] : params.value("sysctl", std::map<std::string, std::string>{})) {
        std::string path = "/proc/sys/" + k;
        for (size_t i = 10; i < path.size(); ++i)
            if (path[i] == '.') path[i] = '/';
        auto r = sys::write_file(path, v);
        if (!r) die(sync_fd, "sysctl " + k + ": " + r.error().message);
    }
    // runc's order: read-only paths, then masks (a mask over a read-only
    // path, such as a /proc/sys entry, stays a mask).
    for (const auto& p : params.value("readonly_paths", std::vector<std::string>{})) {
        auto r = readonly_path(p);
        if (!r) die(sync_fd, "readonly " + p + ": " + r.error().message);
    }
    for (const auto& p : params.value("masked_paths", std::vector<std::string>{})) {
        auto r = mask_path(p);
        if (!r) die(sync_fd, "mask " + p + ": " + r.error().message);
    }
    // createContainer hooks: in the container's namespaces, like runc's;
    // but the only filesystem a guest has is the container's, so their
    // paths resolve there (after pivot_root, where runc is still before).
    if (auto h = params.value("hooks", json::object()); h.contains("createContainer")) {
        auto r = run_hooks(hooks_from_json(h["createContainer"]), "createContainer", params.value("hook_state", json::object()));
        if (!r) die(sync_fd, r.error().message);
    }
    std::string cwd = proc.value("cwd", "/");
    if (!sys::is_dir(cwd)) CHECK(sys::mkdir_p(cwd, 0755));  // as runc, before the root goes read-only
    if (rootp.value("readonly", false)) CHECK(sys::mount("", "/", "", MS_BIND | MS_REMOUNT | MS_RDONLY));
    if (params.contains("userns")) enter_userns(params, sync_fd);
    json start_hooks;
    if (auto h = params.value("hooks", json::object()); h.contains("startContainer")) {
        start_hooks = {{"hooks", h["startContainer"]}, {"state", params.value("hook_state", json::object())}};
        start_hooks["state"]["status"] = "created";
    }
    run_process(proc, params.value("seccomp", json()), sync_fd, io, start_hooks);
}

void exec_init(const json& params, pid_t init_pid, int sync_fd, const Stdio& io) {
    reset_signals();
    // The pid namespace was entered by the agent before clone(); join the
    // rest of the init's. Open them all first: after setns(mnt), /proc is
    // the container's.
    // The user namespace last: the guest's root may enter the others from
    // outside it, and inside it could not enter those it does not own.
    static const std::pair<const char*, int> kinds[] = {{"ipc", CLONE_NEWIPC},
                                                        {"uts", CLONE_NEWUTS},
                                                        {"cgroup", CLONE_NEWCGROUP},
                                                        {"mnt", CLONE_NEWNS},
                                                        {"user", CLONE_NEWUSER}};
    std::vector<std::pair<sys::Fd, int>> ns;
    for (auto [name, flag] : kinds) {
        if (flag == CLONE_NEWUSER && !params.value("userns", false)) continue;
        ns.emplace_back(CHECK(sys::open("/proc/" + std::to_string(init_pid) + "/ns/" + name, O_RDONLY)), flag);
    }
    for (auto& [fd, flag] : ns)
        if (::setns(fd.get(), flag) < 0) die(sync_fd, std::string("setns: ") + strerror(errno));
    ns.clear();
    run_process(params.at("process"), params.value("seccomp", json()), sync_fd, io);
}

}  // namespace husk::agent
