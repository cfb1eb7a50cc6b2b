// Terminals on the caller's side: a private --console-socket for when
// husk itself is the one who shows the container's terminal (`husk run`
// or `husk exec -t` in the foreground, as runc does), and the relay
// between our own stdio and the pty master.
#pragma once
#include <sys/types.h>

#include <string>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk {

// A listening unix socket in a fresh temp directory, removed on
// destruction. Senders connect and pass the master with SCM_RIGHTS; the
// kernel queues it until we accept.
class ConsoleSocket {
public:
    static Result<ConsoleSocket> create();
    ConsoleSocket(ConsoleSocket&&) = default;
    ConsoleSocket& operator=(ConsoleSocket&&) = default;
    ~ConsoleSocket();
    const std::string& path() const { return path_; }
    // The pty master someone sent, waiting up to timeout_ms.
    Result<sys::Fd> receive(int timeout_ms);

private:
    ConsoleSocket() = default;
    std::string dir_, path_;
    sys::Fd listen_;
};

// Relay our stdin -> master and master -> stdout until `child` (our
// child) exits, then drain what is left. Our stdin is made raw while this
// runs when it is a terminal, and its size follows to the master on every
// SIGWINCH. Signals husk would forward (TERM, INT, HUP, ...) go to the
// child. Returns the child's wait status.
Result<int> relay_terminal(int master, pid_t child);
// The window size of the terminal `from` onto the pty master `to` (if
// `from` is a terminal).
void copy_winsize(int from, int to);

}  // namespace husk
