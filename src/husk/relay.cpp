// The host process that stands in for a process in the guest (an exec,
// or a pod member's init): see relay.h.
#include "husk/relay.h"

#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include "husk/log.h"
#include "husk/signals.h"
#include "protocol/creator.h"
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

Result<RelaySession> RelaySession::start(const StatePaths& paths, const proto::ControlRequest& req, const std::vector<int>& fds) {
    RelaySession s;
    s.fd_ = TRY_CTX(sys::unix_connect(paths.shim_sock), "contact shim");
    TRY_CTX(sys::send_fds(s.fd_.get(), proto::to_json(req).dump() + "\n", fds), "contact shim");
    std::optional<std::string> line;
    while (!(line = s.next_line())) {
        if (!TRY(sys::wait_fd(s.fd_.get(), POLLIN, 120000))) return fail("shim did not answer", ETIMEDOUT);
        if (!s.fill()) return fail("the container stopped before the process started", ESRCH);
    }
    auto r = TRY_CTX(proto::control_reply_from_json(json::parse(*line, nullptr, false)), "reply from shim");
    if (!r.ok) return fail(r.error, r.code ? r.code : EINVAL);
    return s;
}

void RelaySession::send(const proto::ControlRequest& line) { (void)sys::write_all(fd_.get(), proto::to_json(line).dump() + "\n"); }

int RelaySession::wait(int sigfd, int tty) {
    if (tty >= 0) resize(tty);
    bool eof = false;
    for (;;) {
        // The exit line may already be buffered: a quick process's exit
        // can arrive in the same read as the reply that started it.
        while (auto line = next_line()) {
            json j = json::parse(*line, nullptr, false);
            if (j.is_object() && j.contains("ok")) continue;  // (a reply to a line of ours: not the end)
            auto e = proto::session_exit_from_json(j);
            if (!e) {
                log::error("exec: " + e.error().message);
                return 255 << 8;
            }
            if (e->signal) return *e->signal & 0x7f;
            return (*e->code & 0xff) << 8;
        }
        if (eof) break;
        pollfd p[2] = {{fd_.get(), POLLIN, 0}, {sigfd, POLLIN, 0}};
        if (::poll(p, 2, -1) < 0 && errno != EINTR) break;
        if (p[1].revents) {
            signalfd_siginfo si;
            while (::read(sigfd, &si, sizeof si) == sizeof si) {
                int sig = int(si.ssi_signo);
                if (sig == SIGWINCH) {
                    if (tty >= 0) resize(tty);
                } else if (sig != SIGCHLD) {
                    send({.op = proto::Op::Signal, .signal = sig});
                }
            }
        }
        if (p[0].revents && !fill()) eof = true;
    }
    log::error("exec: the container stopped before the process reported its exit");
    return 255 << 8;
}

void RelaySession::resize(int tty) {
    if (auto ws = sys::window_size(tty)) send({.op = proto::Op::Resize, .rows = ws->ws_row, .cols = ws->ws_col});
}

bool RelaySession::fill() {
    char tmp[4096];
    ssize_t n;
    do n = ::read(fd_.get(), tmp, sizeof tmp);
    while (n < 0 && errno == EINTR);
    if (n <= 0 || buf_.size() > (1 << 20)) return false;
    buf_.append(tmp, size_t(n));
    return true;
}
std::optional<std::string> RelaySession::next_line() {
    auto nl = buf_.find('\n');
    if (nl == std::string::npos) return std::nullopt;
    std::string l = buf_.substr(0, nl);
    buf_.erase(0, nl + 1);
    return l;
}


// The relay child: detached, or owner of the terminal. A session leader,
// so with a terminal the pty is its controlling one and resizes arrive as
// SIGWINCH.
[[noreturn]] void relay_child(const StatePaths& paths, proto::ControlRequest req, bool tty, const std::string& console,
                              int report, int go, const std::vector<int>& extra) {
    setsid();
    if (go >= 0) {
        auto m = proto::ReportLink(go).next();
        if (!m || !*m || (*m)->kind != proto::Report::Kind::Go) _exit(255);  // the creator gave up
        ::close(go);
    }
    sigset_t set = forwarded_signals();
    sigprocmask(SIG_BLOCK, &set, nullptr);
    auto fail_with = [&](const Error& e) {
        (void)proto::ReportLink(report).send(proto::report_error(e));
        _exit(255);
    };
    sys::Fd sfd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sfd) fail_with(Error{errno, "signalfd"});
    std::optional<sys::Pty> pty;
    std::vector<int> fds = {0, 1, 2};
    if (tty) {
        auto p = sys::open_pty();
        if (!p) fail_with(p.error());
        pty = std::move(*p);
        if (auto r = sys::take_relay_tty(pty->slave.get()); !r) fail_with(r.error());
        // In the foreground our stdin is the caller's terminal: its size is
        // the process's from the start.
        if (auto ws = sys::window_size(0)) ::ioctl(pty->slave.get(), TIOCSWINSZ, &*ws);
        if (auto r = sys::send_console(console, *pty); !r) fail_with(r.error());
        pty->master.reset();
        fds = {pty->slave.get()};
        if (auto ws = sys::window_size(fds[0]); ws && req.op == proto::Op::Exec)
            req.process.console_size = proto::ConsoleSize{ws->ws_row, ws->ws_col};
    }
    fds.insert(fds.end(), extra.begin(), extra.end());
    auto sess = RelaySession::start(paths, req, fds);
    if (!sess) fail_with(sess.error());
    (void)proto::ReportLink(report).send({.kind = proto::Report::Kind::Ok});
    ::close(report);
    // The shim has its own copies of our stdio; holding them would keep
    // the caller's pipes open after the process ends.
    int null = ::open("/dev/null", O_RDWR);
    for (int i = 0; i < 3 && null >= 0; ++i) dup2(null, i);
    if (null > 2) ::close(null);
    int st = sess->wait(sfd.get(), pty ? pty->slave.get() : -1);
    if (WIFSIGNALED(st)) sys::die_of_signal(WTERMSIG(st));
    _exit(WEXITSTATUS(st));
}

}  // namespace husk
