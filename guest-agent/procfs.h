// What the agent reads of the guest's /proc: the processes of a
// container's pid namespace, and each one as `ps` shows it.
#pragma once
#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "protocol/agent.h"

namespace husk::agent {

// Every process in the pid namespace of `init` (init included), never the
// agent.
std::vector<pid_t> pids_in_ns_of(pid_t init);

// Whether a /proc/<pid>/cgroup text puts the process in the cgroup v2
// group `group` ("/container") or below it.
bool in_cgroup(const std::string& proc_cgroup, const std::string& group);
// The cgroup v2 path of a /proc/<pid>/cgroup text ("0::<path>"), if it has one.
std::optional<std::string> cgroup_path(const std::string& proc_cgroup);

// A container's processes, what kill --all signals and ps lists: those of
// its init's pid namespace, and when it has a group (`group`, "" for
// none) only those in it. A pod's containers may share one pid namespace;
// each has a group of its own.
std::vector<pid_t> container_pids(pid_t init, const std::string& group);

// One "Key:\tvalue" field of /proc/<pid>/status ("" if absent).
std::string status_field(const std::string& status, const std::string& key);

// The fields of /proc/<pid>/stat after the command name (field 3, the
// state, first), split on spaces; empty if unreadable.
std::vector<std::string> stat_fields(const std::string& stat);

// Whether a process whose /proc/<pid>/status is `status` would take
// signal `sig` now: it blocks or catches it (SigBlk, SigCgt). The init of
// a pid namespace that does neither has it dropped by the kernel.
bool takes_signal(const std::string& status, int sig);

// A terminal's name from stat's tty_nr: "pts/0", "tty1", "ttyS0", or "?".
std::string tty_name(unsigned long tty_nr);

// The processes `pids` (container_pids of `init`) as `ps` shows them, sorted by
// pid, with the pids that namespace gives them (protocol/agent.h:
// PsProcess). stat is ps's STAT: the state with s/+/l/</N; cmd the command
// line, or [comm]. One that is gone meanwhile is left out.
std::vector<proto::PsProcess> ps_processes(pid_t init, const std::vector<pid_t>& pids);

}  // namespace husk::agent
