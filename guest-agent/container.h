// Building the container inside the guest: the child side of clone().
#pragma once
#include <string>
#include <utility>
#include <vector>

#include <optional>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "protocol/agent.h"

namespace husk::agent {

constexpr const char* kShareMount = "/run/husk/share";
constexpr const char* kContainerRoot = "/run/husk/root";

struct MountFlags {
    unsigned long flags = 0;
    unsigned long propagation = 0;
    bool clear_ro = false;  // "rw" given explicitly
    bool recursive_ro = false;  // "rro": submounts too (mount_setattr)
    std::string data;
};
// runc's option table: flags, propagation, and the rest as fs data.
MountFlags parse_mount_options(const std::vector<std::string>& opts);

// clone() flags for the namespaces the request asks for (mount always).
int clone_flags(const proto::Create& params);

// The pipe ends a process without a terminal gets as fds 0-2, and its
// preserved fds (pipe or socketpair ends) as fds 3.., terminal or not.
struct Stdio {
    int in = -1, out = -1, err = -1;
    std::vector<int> extra;
};

// Both run in a cloned child and never return. They set everything up,
// then tell the parent "R" on sync_fd (a unix socket; with a terminal the
// pty master travels with it as SCM_RIGHTS), wait for "S", and exec. On
// error they write "E<message>" and exit.
//
// container_init builds the container: mounts, pivot_root, hostname...
// First it enters `joins` (fd, CLONE_NEW*): the namespaces it shares with
// another container of the sandbox.
[[noreturn]] void container_init(const proto::Create& params, const std::vector<std::pair<int, int>>& joins, int sync_fd,
                                 const Stdio& io);
// exec_init joins the container of `init_pid` (whose pid namespace the
// caller entered for its children before clone; its user namespace too
// with `userns`) and runs `proc` under the container's `seccomp`.
[[noreturn]] void exec_init(const proto::Process& proc, const std::optional<proto::Seccomp>& seccomp, bool userns,
                            pid_t init_pid, int sync_fd, const Stdio& io);

}  // namespace husk::agent
