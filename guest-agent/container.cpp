#include "guest-agent/container.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <map>
#include <optional>

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
        if (auto it = flags.find(o); it != flags.end()) {
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
        else if (t == "cgroup") f |= CLONE_NEWCGROUP;
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

Result<void> do_mount(int root, const json& m) {
    std::string dest = m.at("destination");
    std::string type = m.value("type", "");
    std::vector<std::string> opts = m.value("options", std::vector<std::string>{});
    MountFlags mf = parse_mount_options(opts);
    if (m.contains("share")) {
        std::string src = std::string(kShareMount) + "/" + m["share"].get<std::string>();
        bool file = !sys::is_dir(src);
        auto target = TRY(make_mountpoint(root, dest, file));
        unsigned long bflags = MS_BIND | (mf.flags & MS_REC);
        TRY(sys::mount(src, fd_path(target), "", bflags));
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
    auto target = TRY(make_mountpoint(root, dest, false));
    TRY(sys::mount(source.empty() ? type : source, fd_path(target), type, mf.flags & ~MS_REMOUNT, mf.data));
    if (mf.propagation) {
        auto mounted = TRY(openat2_in_root(root, dest, O_PATH));
        TRY(sys::mount("", fd_path(mounted), "", mf.propagation));
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
    mode_t old = ::umask(0);
    for (auto& n : nodes) {
        std::string p = std::string("/dev/") + n.name;
        if (::mknod(p.c_str(), S_IFCHR | 0666, makedev(n.maj, n.min)) < 0 && errno != EEXIST) {
            ::umask(old);
            return fail_errno("mknod " + p);
        }
    }
    ::umask(old);
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
[[noreturn]] void run_process(const json& proc, int sync_fd, const Stdio& io) {
    setsid();
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
        int fds[3] = {io.in, io.out, io.err};
        for (int& f : fds)
            if ((f = fcntl(f, F_DUPFD_CLOEXEC, 10)) < 0) die(sync_fd, "dup stdio failed");
        for (int i = 0; i < 3; ++i)
            if (dup2(fds[i], i) < 0) die(sync_fd, "dup2 stdio failed");
    }

    std::string cwd = proc.value("cwd", "/");
    if (proc.contains("umask")) ::umask(mode_t(proc["umask"].get<uint32_t>()));
    else ::umask(022);

    std::vector<gid_t> groups;
    for (auto g : proc.value("additional_gids", std::vector<uint32_t>{})) groups.push_back(g);
    uid_t uid = proc.value("uid", 0u);
    gid_t gid = proc.value("gid", 0u);
    if (::setgroups(groups.size(), groups.data()) < 0) die(sync_fd, std::string("setgroups: ") + strerror(errno));
    if (::setresgid(gid, gid, gid) < 0) die(sync_fd, std::string("setgid: ") + strerror(errno));
    if (::setresuid(uid, uid, uid) < 0) die(sync_fd, std::string("setuid: ") + strerror(errno));
    if (::chdir(cwd.c_str()) < 0) die(sync_fd, "chdir to cwd " + cwd + ": " + strerror(errno));
    if (proc.value("no_new_privileges", false) && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        die(sync_fd, std::string("no_new_privs: ") + strerror(errno));

    auto args = proc.at("args").get<std::vector<std::string>>();
    auto env = proc.value("env", std::vector<std::string>{});
    std::string exe = CHECK(find_executable(args[0], env));

    std::vector<int> pass;
    if (pty) pass.push_back(pty->master.get());
    if (!sys::send_fds(sync_fd, "R", pass)) _exit(1);
    pty.reset();  // the agent holds the master now
    char c = 0;
    if (::read(sync_fd, &c, 1) != 1 || c != 'S') _exit(1);  // deleted before start

    std::vector<char*> argv, envp;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    execve(exe.c_str(), argv.data(), envp.data());
    die(sync_fd, "exec " + exe + ": " + strerror(errno));
}

}  // namespace

void container_init(const json& params, int sync_fd, const Stdio& io) {
    reset_signals();
    const json& proc = params.at("process");
    const json& rootp = params.at("root");

    CHECK(sys::mount("", "/", "", MS_REC | MS_PRIVATE));
    CHECK(sys::mkdir_p(kContainerRoot, 0755));
    std::string share_root = std::string(kShareMount) + "/" + rootp.at("share").get<std::string>();
    CHECK(sys::mount(share_root, kContainerRoot, "", MS_BIND | MS_REC));

    {
        auto root = CHECK(sys::open(kContainerRoot, O_PATH | O_DIRECTORY));
        bool dev_tmpfs = false;
        for (const auto& m : params.value("mounts", json::array())) {
            auto r = do_mount(root.get(), m);
            if (!r) die(sync_fd, "mount " + m.value("destination", "?") + ": " + r.error().message);
            if (m.value("destination", "") == "/dev" && m.value("type", "") == "tmpfs") dev_tmpfs = true;
        }
        CHECK(sys::chdir(kContainerRoot));
        CHECK(sys::pivot_root(".", "."));
        CHECK(sys::umount(".", MNT_DETACH));
        CHECK(sys::chdir("/"));
        if (dev_tmpfs) CHECK(populate_dev());
    }

    std::string hostname = params.value("hostname", "");
    if (!hostname.empty() && sethostname(hostname.c_str(), hostname.size()) < 0)
        die(sync_fd, std::string("sethostname: ") + strerror(errno));
    for (const auto& p : params.value("masked_paths", std::vector<std::string>{})) {
        auto r = mask_path(p);
        if (!r) die(sync_fd, "mask " + p + ": " + r.error().message);
    }
    for (const auto& p : params.value("readonly_paths", std::vector<std::string>{})) {
        auto r = readonly_path(p);
        if (!r) die(sync_fd, "readonly " + p + ": " + r.error().message);
    }
    std::string cwd = proc.value("cwd", "/");
    if (!sys::is_dir(cwd)) CHECK(sys::mkdir_p(cwd, 0755));  // as runc, before the root goes read-only
    if (rootp.value("readonly", false)) CHECK(sys::mount("", "/", "", MS_BIND | MS_REMOUNT | MS_RDONLY));
    run_process(proc, sync_fd, io);
}

void exec_init(const json& params, pid_t init_pid, int sync_fd, const Stdio& io) {
    reset_signals();
    // The pid namespace was entered by the agent before clone(); join the
    // rest of the init's. Open them all first: after setns(mnt), /proc is
    // the container's.
    static const std::pair<const char*, int> kinds[] = {
        {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP}, {"mnt", CLONE_NEWNS}};
    std::vector<std::pair<sys::Fd, int>> ns;
    for (auto [name, flag] : kinds)
        ns.emplace_back(CHECK(sys::open("/proc/" + std::to_string(init_pid) + "/ns/" + name, O_RDONLY)), flag);
    for (auto& [fd, flag] : ns)
        if (::setns(fd.get(), flag) < 0) die(sync_fd, std::string("setns: ") + strerror(errno));
    ns.clear();
    run_process(params.at("process"), sync_fd, io);
}

}  // namespace husk::agent
