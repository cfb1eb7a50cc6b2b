// The host process that stands in for a process in the guest: an exec'd
// process, or the init of a container that joined a pod's VM. It is the
// pid callers wait on: it forwards signals (and terminal resizes) to the
// process and exits with its status. Its stdio never passes through it:
// the fds go to the shim with SCM_RIGHTS and the shim relays them to the
// guest.
#pragma once
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/log.h"
#include "husk/paths.h"
#include "husk/result.h"
#include "sys/sys.h"

namespace husk {

// The line-based session with the shim (shim.cpp start_exec,
// create_member): one request that carries the stdio fds, its answer, and
// later the process's exit.
class RelaySession {
public:
    static Result<RelaySession> start(const StatePaths& paths, const nlohmann::json& req, const std::vector<int>& fds) {
        RelaySession s;
        s.fd_ = TRY_CTX(sys::unix_connect(paths.shim_sock), "contact shim");
        TRY_CTX(sys::send_fds(s.fd_.get(), req.dump() + "\n", fds), "contact shim");
        std::optional<std::string> line;
        while (!(line = s.next_line())) {
            if (!TRY(sys::wait_fd(s.fd_.get(), POLLIN, 120000))) return fail("shim did not answer", ETIMEDOUT);
            if (!s.fill()) return fail("the container stopped before the process started", ESRCH);
        }
        nlohmann::json r = nlohmann::json::parse(*line, nullptr, false);
        if (!r.is_object()) return fail("malformed reply from shim", EPROTO);
        if (!r.value("ok", false)) return fail(r.value("error", std::string("shim refused")), EINVAL);
        return s;
    }

    void send(const nlohmann::json& j) { (void)sys::write_all(fd_.get(), j.dump() + "\n"); }

    // Until the exit line: forward signals from `sigfd`, and with a
    // terminal (`tty` >= 0, our controlling one) its size on SIGWINCH.
    int wait(int sigfd, int tty) {
        if (tty >= 0) resize(tty);
        bool eof = false;
        for (;;) {
            // The exit line may already be buffered: a quick process's exit
            // can arrive in the same read as the reply that started it.
            while (auto line = next_line()) {
                nlohmann::json r = nlohmann::json::parse(*line, nullptr, false);
                if (!r.is_object() || !r.contains("exit") || !r["exit"].is_object()) continue;
                const nlohmann::json& e = r["exit"];
                if (e.contains("signal") && e["signal"].is_number_integer()) return e["signal"].get<int>() & 0x7f;
                return (e.value("code", 255) & 0xff) << 8;
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
                        send({{"op", "signal"}, {"signal", sig}});
                    }
                }
            }
            if (p[0].revents && !fill()) eof = true;
        }
        log::error("exec: the container stopped before the process reported its exit");
        return 255 << 8;
    }

private:
    void resize(int tty) {
        if (auto ws = sys::window_size(tty)) send({{"op", "resize"}, {"rows", ws->ws_row}, {"cols", ws->ws_col}});
    }

    // One read into the buffer; false at EOF or on error.
    bool fill() {
        char tmp[4096];
        ssize_t n;
        do n = ::read(fd_.get(), tmp, sizeof tmp);
        while (n < 0 && errno == EINTR);
        if (n <= 0 || buf_.size() > (1 << 20)) return false;
        buf_.append(tmp, size_t(n));
        return true;
    }
    std::optional<std::string> next_line() {
        auto nl = buf_.find('\n');
        if (nl == std::string::npos) return std::nullopt;
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
    }

    sys::Fd fd_;
    std::string buf_;
};


// The relay child (never returns): once `go` (>= 0) reads "g", it sends
// `req` with its stdio (a new pty whose master goes to `console` when
// `tty`) and then `extra` fds to the shim of `paths`, reports "ok\n" or
// "error: ...\n" on `report`, then stands in for the process until it
// exits.
[[noreturn]] void relay_child(const StatePaths& paths, nlohmann::json req, bool tty, const std::string& console, int report,
                              int go, const std::vector<int>& extra = {});

}  // namespace husk
