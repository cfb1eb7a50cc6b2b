// The host process that stands in for a process in the guest: an exec'd
// process, or the init of a container that joined a pod's VM. It is the
// pid callers wait on: it forwards signals (and terminal resizes) to the
// process and exits with its status. Its stdio never passes through it:
// the fds go to the shim with SCM_RIGHTS and the shim relays them to the
// guest.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "husk/paths.h"
#include "husk/result.h"
#include "protocol/control.h"
#include "sys/sys.h"

namespace husk {

// The line-based session with the shim (shim.cpp start_exec,
// create_member): one request that carries the stdio fds, its answer, and
// later the process's exit.
class RelaySession {
public:
    static Result<RelaySession> start(const StatePaths& paths, const proto::ControlRequest& req, const std::vector<int>& fds);
    void send(const proto::ControlRequest& line);
    // Until the exit line: forward signals from `sigfd`, and with a
    // terminal (`tty` >= 0, our controlling one) its size on SIGWINCH.
    // Returns a wait status.
    int wait(int sigfd, int tty);

private:
    void resize(int tty);
    bool fill();  // one read into the buffer; false at EOF or on error
    std::optional<std::string> next_line();

    sys::Fd fd_;
    std::string buf_;
};

// The relay child (never returns): once `go` (>= 0) reads go, it sends
// `req` with its stdio (a new pty whose master goes to `console` when
// `tty`) and then `extra` fds to the shim of `paths`, reports ok or its
// error on `report` (protocol/creator.h), then stands in for the process
// until it exits.
[[noreturn]] void relay_child(const StatePaths& paths, proto::ControlRequest req, bool tty, const std::string& console,
                              int report, int go, const std::vector<int>& extra = {});

}  // namespace husk
