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
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

// The relay child: detached, or owner of the terminal. A session leader,
// so with a terminal the pty is its controlling one and resizes arrive as
// SIGWINCH.
[[noreturn]] void relay_child(const StatePaths& paths, json req, bool tty, const std::string& console, int report, int go,
                              const std::vector<int>& extra) {
    setsid();
    if (go >= 0) {
        char c = 0;
        while (::read(go, &c, 1) < 0 && errno == EINTR) {
        }
        if (c != 'g') _exit(255);  // the creator gave up
        ::close(go);
    }
    sigset_t set = forwarded_signals();
    sigprocmask(SIG_BLOCK, &set, nullptr);
    auto fail_with = [&](const Error& e) {
        (void)sys::write_all(report, "error: " + e.message + "\n");
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
        if (auto ws = sys::window_size(fds[0]); ws && req.contains("process"))
            req["process"]["console_size"] = {{"rows", ws->ws_row}, {"cols", ws->ws_col}};
    }
    fds.insert(fds.end(), extra.begin(), extra.end());
    auto sess = RelaySession::start(paths, req, fds);
    if (!sess) fail_with(sess.error());
    (void)sys::write_all(report, "ok\n");
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
