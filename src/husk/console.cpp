#include "husk/console.h"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "husk/signals.h"
#include "sys/sys.h"

namespace husk {

Result<ConsoleSocket> ConsoleSocket::create() {
    ConsoleSocket c;
    const char* tmp = getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/husk-console-XXXXXX";
    if (!mkdtemp(tmpl.data())) return fail_errno("console socket dir");
    c.dir_ = tmpl;
    c.path_ = tmpl + "/console.sock";
    c.listen_ = TRY(sys::unix_listen(c.path_, 1));
    return c;
}

ConsoleSocket::~ConsoleSocket() {
    if (dir_.empty()) return;
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
}

Result<sys::Fd> ConsoleSocket::receive(int timeout_ms) {
    if (!TRY(sys::wait_fd(listen_.get(), POLLIN, timeout_ms))) return fail("no terminal was sent to the console socket", ETIMEDOUT);
    auto conn = TRY(sys::accept(listen_.get()));
    // The shim is connected: the path has done its job. Gone now, it is
    // not left behind if we are killed before the destructor runs.
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
    if (!TRY(sys::wait_fd(conn.get(), POLLIN, timeout_ms))) return fail("no terminal was sent to the console socket", ETIMEDOUT);
    std::vector<sys::Fd> fds;
    TRY(sys::recv_fds(conn.get(), 4096, fds));
    if (fds.size() != 1) return fail("console socket: expected one fd, got " + std::to_string(fds.size()), EPROTO);
    return std::move(fds[0]);
}

namespace {

// Our terminal, raw for the duration and restored on every way out.
class RawMode {
public:
    explicit RawMode(int fd) : fd_(fd) {
        if (!isatty(fd) || tcgetattr(fd, &saved_) < 0) return;
        struct termios t = saved_;
        cfmakeraw(&t);
        active_ = tcsetattr(fd, TCSANOW, &t) == 0;
    }
    ~RawMode() {
        if (active_) tcsetattr(fd_, TCSANOW, &saved_);
    }
    RawMode(const RawMode&) = delete;
    RawMode& operator=(const RawMode&) = delete;

private:
    int fd_;
    struct termios saved_{};
    bool active_ = false;
};

}  // namespace

void copy_winsize(int from, int to) {
    if (auto ws = sys::window_size(from)) ::ioctl(to, TIOCSWINSZ, &*ws);
}

Result<int> relay_terminal(int master, pid_t child) {
    sigset_t set = forwarded_signals(), old;
    sigprocmask(SIG_BLOCK, &set, &old);
    sys::Fd sfd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sfd) return fail_errno("signalfd");
    RawMode raw(0);
    copy_winsize(0, master);
    TRY(sys::set_nonblock(master, true));

    bool in_open = true, master_open = true;
    std::string to_master, to_out;
    int status = 0;
    for (;;) {
        pid_t r = ::waitpid(child, &status, WNOHANG);
        if (r == child) break;
        std::vector<pollfd> p = {{sfd.get(), POLLIN, 0}};
        auto add = [&](int fd, short ev) { p.push_back({fd, ev, 0}); };
        if (in_open && to_master.size() < (64 << 10)) add(0, POLLIN);
        else add(-1, 0);
        short mev = short((master_open && to_out.size() < (64 << 10) ? POLLIN : 0) | (to_master.empty() ? 0 : POLLOUT));
        add(master_open ? master : -1, mev);
        add(to_out.empty() ? -1 : 1, POLLOUT);
        if (::poll(p.data(), p.size(), 200) < 0 && errno != EINTR) return fail_errno("poll");
        if (p[0].revents) {
            signalfd_siginfo si;
            while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
                int sig = int(si.ssi_signo);
                if (sig == SIGWINCH) copy_winsize(0, master);
                else if (sig != SIGCHLD) ::kill(child, sig);
            }
        }
        char buf[16 << 10];
        if (p[1].revents) {
            ssize_t n = ::read(0, buf, sizeof buf);
            if (n > 0) to_master.append(buf, size_t(n));
            else if (n == 0 || (errno != EINTR && errno != EAGAIN)) in_open = false;
        }
        if (p[2].revents & POLLOUT) {
            ssize_t n = ::write(master, to_master.data(), to_master.size());
            if (n > 0) to_master.erase(0, size_t(n));
        }
        if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = ::read(master, buf, sizeof buf);
            if (n > 0) to_out.append(buf, size_t(n));
            else if (n == 0 || (errno != EINTR && errno != EAGAIN)) master_open = false;  // EIO: no slave left
        }
        if (p[3].revents) {
            ssize_t n = ::write(1, to_out.data(), to_out.size());
            if (n > 0) to_out.erase(0, size_t(n));
            else if (n < 0 && errno != EINTR && errno != EAGAIN) to_out.clear();
        }
    }
    // The child is gone: what the master still holds is the last output.
    for (;;) {
        char buf[16 << 10];
        ssize_t n = master_open ? ::read(master, buf, sizeof buf) : 0;
        if (n > 0) to_out.append(buf, size_t(n));
        if (n <= 0) break;
    }
    (void)sys::write_all(1, to_out);
    sigprocmask(SIG_SETMASK, &old, nullptr);
    return status;
}

}  // namespace husk
