#pragma once
#include <signal.h>

#include <string>

#include "husk/result.h"

namespace husk {

// "TERM", "SIGTERM", "sigterm", "15", "RTMIN+3" -> signal number.
Result<int> parse_signal(const std::string& s);
// 15 -> "SIGTERM"
std::string signal_name(int sig);
// What a process standing in for a container process (husk run, exec,
// the terminal relay) blocks and passes on; SIGCHLD and SIGWINCH are in
// the set for its own use, never forwarded as such.
sigset_t forwarded_signals();
// Wait for `child`, passing it every forwarded signal we get (which the
// caller has blocked); returns its wait status.
int wait_forwarding(pid_t child);

}  // namespace husk
