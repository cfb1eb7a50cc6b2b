// Building the container inside the guest: the child side of clone().
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk::agent {

constexpr const char* kShareMount = "/run/husk/share";
constexpr const char* kContainerRoot = "/run/husk/root";

struct MountFlags {
    unsigned long flags = 0;
    unsigned long propagation = 0;
    bool clear_ro = false;  // "rw" given explicitly
    std::string data;
};
// runc's option table: flags, propagation, and the rest as fs data.
MountFlags parse_mount_options(const std::vector<std::string>& opts);

// clone() flags for the namespaces the request asks for (mount always).
int clone_flags(const nlohmann::json& params);

// Runs in the cloned child. Sets up everything, then tells the parent
// "R" on sync_fd, waits for "S", and execs. On error writes "E<message>"
// and exits; never returns.
[[noreturn]] void container_init(const nlohmann::json& params, int sync_fd, int in_fd, int out_fd, int err_fd);

}  // namespace husk::agent
