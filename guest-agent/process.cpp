// Becoming the container's process in the cloned child: capabilities,
// seccomp, user and groups, rlimits, stdio and cwd, then execve, in runc's
// order (child.h).
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

namespace {

Result<void> apply_bounding(const std::vector<int>& keep) {
    for (int cap = 0; cap <= CAP_LAST_CAP; ++cap) {
        if (std::find(keep.begin(), keep.end(), cap) != keep.end()) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL) return fail_errno("drop bounding cap " + std::to_string(cap));
    }
    return {};
}

using CapSets = std::map<std::string, std::vector<int>>;

// The numbers of one set (none when the spec left it out).
const std::vector<int>& cap_set(const CapSets& caps, const char* set) {
    static const std::vector<int> none;
    auto it = caps.find(set);
    return it == caps.end() ? none : it->second;
}

Result<void> apply_caps(const CapSets& caps) {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    auto fill = [&](const char* set, uint32_t __user_cap_data_struct::*field) {
        for (int cap : cap_set(caps, set)) {
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
    for (int cap : cap_set(caps, "ambient"))
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
Result<void> load_seccomp(const proto::Seccomp& sec) {
    uint32_t def = seccomp_action(sec.default_action, sec.default_errno_ret.value_or(EPERM));
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
    for (const auto& a : sec.architectures) {
        std::string n = a.rfind("SCMP_ARCH_", 0) == 0 ? a.substr(10) : a;
        for (auto& ch : n) ch = char(std::tolower(static_cast<unsigned char>(ch)));
        uint32_t arch = seccomp_arch_resolve_name(n.c_str());
        if (!arch) continue;  // an architecture this libseccomp does not know
        int rc = seccomp_arch_add(ctx, arch);
        if (rc < 0 && rc != -EEXIST) return fail("seccomp: architecture " + a + ": " + strerror(-rc), EINVAL);
    }
    for (const auto& f : sec.flags) {
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
    for (const auto& rule : sec.syscalls) {
        uint32_t act = seccomp_action(rule.action, rule.errno_ret.value_or(EPERM));
        if (act == def) continue;
        std::vector<scmp_arg_cmp> args;
        for (const auto& a : rule.args) {
            auto op = ops.find(a.op);
            if (op == ops.end()) return fail("seccomp: unknown operator " + a.op, EINVAL);  // (the decoder refused it)
            args.push_back({a.index, op->second, a.value, a.value_two});
        }
        // libseccomp refuses two comparisons of one argument in a rule;
        // runc then adds each condition as a rule of its own (so they
        // match as alternatives), and so do we.
        std::vector<std::vector<scmp_arg_cmp>> rules;
        if (seccomp_args_repeat(args))
            for (const auto& a : args) rules.push_back({a});
        else
            rules.push_back(args);
        for (const auto& name : rule.names) {
            int nr = seccomp_syscall_resolve_name(name.c_str());
            if (nr == __NR_SCMP_ERROR) continue;
            for (const auto& r : rules) {
                int rc = seccomp_rule_add_array(ctx, act, nr, unsigned(r.size()), r.data());
                if (rc < 0) return fail("seccomp: rule for " + name + ": " + strerror(-rc), EINVAL);
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
        int left_alone_if_not = ::fchown(fd, uid, st.st_gid);  // (void) does not quiet _FORTIFY_SOURCE's warn_unused_result
        (void)left_alone_if_not;
    }
}

}  // namespace

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
    if (auto found = sys::search_path(arg0, path)) return *found;
    return fail("exec: \"" + arg0 + "\": executable file not found in $PATH", ENOENT);
}

void reset_signals() {
    // The agent blocks signals for its signalfd; the workload must not inherit that.
    sys::unblock_all_signals();
    for (int sig = 1; sig < NSIG; ++sig) signal(sig, SIG_DFL);
}

// What every process of the container goes through once it is inside the
// container's namespaces and root: stdio (pipes, or a pty from the
// container's own devpts), credentials, cwd, then "R" (with the pty master
// attached), wait for "S", execve.
[[noreturn]] void run_process(const proto::Process& proc, const std::optional<proto::Seccomp>& seccomp, int sync_fd,
                              const Stdio& io, const std::optional<StartHooks>& start_hooks, std::optional<sys::Pty> console) {
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
        if (console)
            for (sys::Fd* f : {&console->master, &console->slave}) {
                int n = f->get();
                lift(n);
                *f = sys::Fd(n);  // (the old number closed: a preserved fd goes there)
            }
        lift(moved.in);
        lift(moved.out);
        lift(moved.err);
        for (int& f : moved.extra) lift(f);
        for (size_t i = 0; i < moved.extra.size(); ++i)
            if (dup2(moved.extra[i], int(3 + i)) < 0) die(sync_fd, "dup2 preserved fd failed");
    }
    std::optional<sys::Pty> pty = std::move(console);
    if (proc.terminal) {
        if (!pty) {
            auto p = sys::open_pty("/dev/ptmx");
            if (!p) die(sync_fd, "terminal: " + p.error().message + " (the container needs /dev/pts and /dev/ptmx)");
            pty = std::move(*p);
        }
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

    const std::string& cwd = proc.cwd;
    ::umask(mode_t(proc.umask.value_or(022)));

    // runc's order: limits while still privileged; seccomp now if it cannot
    // wait for no_new_privs (loading it then needs CAP_SYS_ADMIN); bounding
    // set; user with caps kept; the configured caps; cwd; no_new_privs;
    // seccomp last when no_new_privs lets it load unprivileged.
    for (const auto& l : proc.rlimits) {
        struct rlimit rl{rlim_t(l.soft), rlim_t(l.hard)};
        if (::setrlimit(l.resource, &rl) < 0) die(sync_fd, std::string("setrlimit: ") + strerror(errno));
    }
    if (proc.oom_score_adj) CHECK(sys::write_file("/proc/self/oom_score_adj", std::to_string(*proc.oom_score_adj)));
    auto env = proc.env;
    if (std::none_of(env.begin(), env.end(), [](const std::string& e) { return e.rfind("HOME=", 0) == 0; }))
        env.push_back("HOME=" + home_of(proc.uid));  // as runc, from the container's passwd
    bool nnp = proc.no_new_privileges;
    if (seccomp && !nnp) CHECK(load_seccomp(*seccomp));
    // The cwd as runc enters it: first with every privilege (a directory
    // root may enter but the user may not still works), again as the
    // user if that was refused (one the user may enter but root, lacking
    // CAP_DAC_OVERRIDE in a user namespace, may not).
    bool cwd_later = false;
    if (::chdir(cwd.c_str()) < 0) {
        if (errno != EACCES && errno != EPERM) die(sync_fd, "chdir to cwd " + cwd + ": " + strerror(errno));
        cwd_later = true;
    }
    bool caps = proc.capabilities.has_value();
    if (caps) {
        CHECK(apply_bounding(cap_set(*proc.capabilities, "bounding")));
        if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) die(sync_fd, std::string("keepcaps: ") + strerror(errno));
    }

    std::vector<gid_t> groups;
    for (auto g : proc.additional_gids) groups.push_back(g);
    uid_t uid = proc.uid;
    gid_t gid = proc.gid;
    fix_stdio_owner(uid);
    if (::setgroups(groups.size(), groups.data()) < 0) die(sync_fd, std::string("setgroups: ") + strerror(errno));
    if (::setresgid(gid, gid, gid) < 0) die(sync_fd, std::string("setgid: ") + strerror(errno));
    if (::setresuid(uid, uid, uid) < 0) die(sync_fd, std::string("setuid: ") + strerror(errno));
    if (cwd_later && ::chdir(cwd.c_str()) < 0) die(sync_fd, "chdir to cwd " + cwd + ": " + strerror(errno));
    if (caps) {
        prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
        CHECK(apply_caps(*proc.capabilities));
    }
    if (nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die(sync_fd, std::string("no_new_privs: ") + strerror(errno));

    auto args = proc.args;
    std::string exe = CHECK(find_executable(args[0], env));

    std::vector<int> pass;
    if (pty) pass = {pty->master.get(), pty->slave.get()};
    if (!sys::send_fds(sync_fd, "R", pass)) _exit(1);
    pty.reset();  // the agent holds the master now (and a peer: supervisor.h)
    char c = 0;
    if (::read(sync_fd, &c, 1) != 1 || c != 'S') _exit(1);  // deleted before start
    // Nothing of the agent's past exec but stdio and the preserved fds,
    // whatever was opened without O_CLOEXEC (runc's CVE-2024-21626 was a
    // leaked fd); before seccomp, which may refuse close_range.
    sys::cloexec_from(3 + int(io.extra.size()));
    if (seccomp && nnp) CHECK(load_seccomp(*seccomp));
    // startContainer hooks: as runc, once the process is what it will be
    // (its seccomp filter included), right before its program starts.
    if (start_hooks) {
        auto r = run_hooks(start_hooks->hooks, "startContainer", start_hooks->state);
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

}  // namespace husk::agent
