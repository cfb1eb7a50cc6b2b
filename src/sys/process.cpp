// The syscall layer (sys.h): processes: their state, spawn, fds, signals.
#include "sys/sys.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <sched.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <memory>
#include <sstream>
#include <thread>

namespace husk::sys {

static std::optional<std::pair<char, unsigned long long>> proc_stat(pid_t pid) {
    auto s = read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
    if (!s) return std::nullopt;
    // comm may contain spaces and parens: fields resume after the last ')'.
    auto rp = s->rfind(')');
    if (rp == std::string::npos || rp + 2 >= s->size()) return std::nullopt;
    const char* p = s->c_str() + rp + 2;
    char state = *p;
    // field 3 is state; start time is field 22, 19 fields further on.
    for (int field = 3; field < 22; ++field) {
        p = std::strchr(p, ' ');
        if (!p) return std::nullopt;
        ++p;
    }
    return std::make_pair(state, std::strtoull(p, nullptr, 10));
}

std::optional<unsigned long long> proc_start_time(pid_t pid) {
    auto st = proc_stat(pid);
    if (!st) return std::nullopt;
    return st->second;
}

bool process_alive(pid_t pid, unsigned long long start_time) {
    if (pid <= 0) return false;
    auto st = proc_stat(pid);
    if (!st) return false;
    if (start_time != 0 && st->second != start_time) return false;
    return st->first != 'Z' && st->first != 'X';
}

Result<Fd> pidfd_open(pid_t pid) {
    int fd = int(::syscall(SYS_pidfd_open, pid, 0));
    if (fd < 0) return fail_errno("pidfd_open " + std::to_string(pid));
    return Fd(fd);
}

std::vector<pid_t> child_pids(pid_t pid) {
    std::vector<pid_t> out;
    auto text = read_file("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children", 1 << 16);
    if (!text) return out;
    std::istringstream in(*text);
    for (pid_t c; in >> c;) out.push_back(c);
    return out;
}

std::vector<MemRange> file_mappings(const std::string& maps, const std::vector<std::string>& paths) {
    // "start-end perms offset dev inode   path": the path is the rest of
    // the line after five fields (it may hold spaces; " (deleted)" too).
    std::vector<MemRange> out;
    std::istringstream in(maps);
    for (std::string line; std::getline(in, line);) {
        std::istringstream f(line);
        std::string range, perms, offset, dev, inode;
        if (!(f >> range >> perms >> offset >> dev >> inode)) continue;
        std::string path;
        std::getline(f >> std::ws, path);
        if (std::find(paths.begin(), paths.end(), path) == paths.end()) continue;
        auto dash = range.find('-');
        if (dash == std::string::npos) continue;
        char* end = nullptr;
        unsigned long long a = std::strtoull(range.c_str(), &end, 16);
        if (end != range.c_str() + dash) continue;
        unsigned long long b = std::strtoull(range.c_str() + dash + 1, &end, 16);
        if (*end != '\0' || b <= a) continue;
        out.push_back({uintptr_t(a), size_t(b - a)});
    }
    return out;
}

Result<uint64_t> process_madvise(int pidfd, const std::vector<MemRange>& ranges, int advice) {
    uint64_t done = 0;
    for (const auto& r : ranges) {  // one range a call; the first refusal ends it
        struct iovec v = {reinterpret_cast<void*>(r.start), r.len};
        long n = ::syscall(SYS_process_madvise, pidfd, &v, 1, advice, 0);
        if (n < 0) return fail_errno("process_madvise");
        done += uint64_t(n);
    }
    return done;
}

bool wait_process_exit(pid_t pid, unsigned long long start_time, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    auto pfd = pidfd_open(pid);
    while (process_alive(pid, start_time)) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        // A pidfd turns readable at exit (zombie included); poll in short
        // steps anyway so a reused pid cannot trap us.
        if (pfd) (void)wait_fd(pfd->get(), POLLIN, int(std::min<long>(left.count(), 50)));
        else std::this_thread::sleep_for(std::chrono::milliseconds(std::min<long>(left.count(), 20)));
    }
    return true;
}

std::string self_exe_dir() {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return ".";
    buf[n] = 0;
    return dirname(buf);
}

// close_range(2) over [lo, hi]; where the kernel has none (before 5.9),
// one by one up to the fd limit.
static void close_span(unsigned lo, unsigned hi, bool cloexec) {
    if (::close_range(lo, hi, cloexec ? CLOSE_RANGE_CLOEXEC : 0) == 0) return;
    struct rlimit rl{};
    unsigned top = 1u << 20;  // the kernel's default nr_open
    if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY) top = unsigned(std::min<rlim_t>(rl.rlim_max, top));
    for (unsigned fd = lo; fd <= hi && fd < top; ++fd)
        if (cloexec) ::fcntl(int(fd), F_SETFD, FD_CLOEXEC);
        else ::close(int(fd));
}

void close_fds_except(int low, const int* keep, size_t n) {
    unsigned cur = unsigned(std::max(low, 0));
    for (;;) {
        unsigned next = ~0U;  // the lowest kept fd at or above cur
        for (size_t i = 0; i < n; ++i)
            if (keep[i] >= 0 && unsigned(keep[i]) >= cur && unsigned(keep[i]) < next) next = unsigned(keep[i]);
        if (next == ~0U) return close_span(cur, ~0U, false);
        if (next > cur) close_span(cur, next - 1, false);
        cur = next + 1;
    }
}

void cloexec_from(int low) { close_span(unsigned(std::max(low, 0)), ~0U, true); }

Result<pid_t> spawn(const std::vector<std::string>& argv, const SpawnOptions& o) {
    // The child writes why it failed into this pipe; exec closes it.
    auto [err_r, err_w_] = TRY(pipe(O_CLOEXEC));
    int err_w = err_w_.get();  // a plain int: clang 14 cannot capture a structured binding
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int first_free = 3;
    for (auto& [from, to] : o.fds) first_free = std::max(first_free, to + 1);
    std::vector<int> keep{err_w};  // built before the fork: the child only reads it
    for (auto& [from, to] : o.fds) keep.push_back(to);
    pid_t parent = getpid();
    pid_t pid;
    if (o.clone_flags) {
        // struct clone_args, version 0 (<linux/sched.h> clashes with <sched.h>).
        struct {
            uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
        } ca{};
        ca.flags = o.clone_flags;
        ca.exit_signal = SIGCHLD;
        pid = pid_t(::syscall(SYS_clone3, &ca, sizeof ca));
        if (pid < 0) return fail_errno("clone3");
    } else {
        pid = fork();
        if (pid < 0) return fail_errno("fork");
    }
    if (pid == 0) {
        auto die = [&](const std::string& what) {
            std::string m = what + ": " + std::strerror(errno);
            (void)!::write(err_w, m.data(), m.size());
            _exit(127);
        };
        if (o.die_with_parent) {
            if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) die("prctl");
            if (!(o.clone_flags & CLONE_NEWPID) && getppid() != parent) _exit(1);  // already orphaned
        }
        unblock_all_signals();
        signal(SIGPIPE, SIG_DFL);  // an ignored SIGPIPE would survive exec
        // Park the sources above every target first, so one dup2 cannot
        // clobber a source another still needs; dup2 clears close-on-exec.
        std::vector<int> parked;
        for (auto& [from, to] : o.fds) {
            int p = ::fcntl(from, F_DUPFD_CLOEXEC, std::max(first_free, err_w + 1));
            if (p < 0) die("dup fd " + std::to_string(from));
            parked.push_back(p);
        }
        for (size_t i = 0; i < o.fds.size(); ++i)
            if (::dup2(parked[i], o.fds[i].second) < 0) die("dup2 fd " + std::to_string(o.fds[i].second));
        // Every fd but the mapped ones (which may leave gaps: a lifeline
        // at 100) and the error pipe, however high the caller's fds go.
        close_fds_except(3, keep.data(), keep.size());
        if (o.in_child)
            if (auto r = o.in_child(); !r) {
                (void)!::write(err_w, r.error().message.data(), r.error().message.size());
                _exit(127);
            }
        if (!o.cwd.empty() && ::chdir(o.cwd.c_str()) < 0) die("chdir " + o.cwd);
        for (const auto& cg : o.cgroups) {
            int fd = ::open((cg + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
            if (fd < 0 || ::write(fd, "0", 1) != 1) die("join cgroup " + cg);
            ::close(fd);
        }
        std::vector<char*> envp;
        if (o.env) {
            for (auto& e : *o.env) envp.push_back(const_cast<char*>(e.c_str()));
            envp.push_back(nullptr);
        }
        if (!o.path.empty()) ::execve(o.path.c_str(), args.data(), o.env ? envp.data() : environ);
        else if (o.env) ::execvpe(args[0], args.data(), envp.data());
        else ::execvp(args[0], args.data());
        die("exec " + (o.path.empty() ? argv[0] : o.path));
    }
    err_w_.reset();
    auto msg = read_to_eof(err_r.get(), 4096);
    if (!msg || !msg->empty()) {
        int st;
        while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        return fail(msg ? *msg : msg.error().message, ENOEXEC);
    }
    return pid;
}

void ensure_std_fds() {
    for (int fd = 0; fd <= 2; ++fd)
        if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
            int n = ::open("/dev/null", O_RDWR);  // lowest free: this one
            if (n >= 0 && n != fd) ::close(n);
        }
}

Result<Fd> signalfd_of(std::initializer_list<int> signals) {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : signals) sigaddset(&mask, s);
    if (sigprocmask(SIG_BLOCK, &mask, nullptr) < 0) return fail_errno("sigprocmask");
    Fd fd(::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!fd) return fail_errno("signalfd");
    return fd;
}

void unblock_all_signals() {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
}

void die_of_signal(int sig) {
    struct rlimit nocore{0, 0};
    setrlimit(RLIMIT_CORE, &nocore);
    signal(sig, SIG_DFL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    sigprocmask(SIG_UNBLOCK, &s, nullptr);
    ::kill(getpid(), sig);
    _exit(128 + sig);
}

}  // namespace husk::sys
