// `husk ps ID [ps options]`: runc runs the host's ps (default -ef) and keeps
// the container's lines. A guest's processes are not the host's, so husk
// prints the same columns itself from what the agent read in the guest.
#pragma once
#include <ctime>
#include <string>
#include <vector>

#include "husk/result.h"
#include "protocol/agent.h"

namespace husk {

// `procs` as the agent's ps answers (guest-agent/procfs.h); `opts` the ps
// options after the id ({} = -ef). Supported: the UNIX options -e, -A, -f
// (any mix: the full format with f, else PID TTY TIME CMD) and BSD a, u,
// x (USER PID %CPU %MEM VSZ RSS TTY STAT START TIME COMMAND with u, else
// PID TTY STAT TIME COMMAND). `now` dates STIME/START.
Result<std::string> format_ps(const std::vector<proto::PsProcess>& procs, const std::vector<std::string>& opts, time_t now);
// Whether format_ps takes `opts` (checked before the guest is asked).
Result<void> check_ps_options(const std::vector<std::string>& opts);

}  // namespace husk
