// The containers' cgroups in the guest (v2 only): /sys/fs/cgroup/container
// for the sandbox's first container, container-<init process index> for
// each container that joins it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "protocol/agent.h"
#include "sys/fd.h"

namespace husk::agent {

constexpr const char* kCgroupRoot = "/sys/fs/cgroup";
constexpr const char* kContainerCgroup = "/sys/fs/cgroup/container";

// Mount cgroup2 and hand every controller the kernel has to the children.
Result<void> init_cgroups();

// The group of the container whose init has process index `init`.
std::string container_cgroup_dir(uint32_t init);

using CgroupFiles = std::vector<std::pair<std::string, std::string>>;

// Create the container's group `dir`, write `files` and attach the device
// filter for `device_rules`. Returns an fd for clone3(CLONE_INTO_CGROUP).
Result<sys::Fd> create_container_cgroup(const std::string& dir, const CgroupFiles& files,
                                        const std::vector<proto::DeviceRule>& device_rules);
// Remove it, and the groups its processes made below it (systemd's
// init.scope, system.slice...), once its processes are gone (waiting
// briefly for them).
void remove_container_cgroup(const std::string& dir);
// The group process `pid` is in, when that is `dir` or below it: where an
// exec goes when `dir` itself cannot take a process (cgroup v2's rule: no
// processes in a group that hands controllers to its children, as an init
// like systemd makes it), as runc's exec joins its init's group then.
Result<sys::Fd> open_process_cgroup(pid_t pid, const std::string& dir);

// Write (name, value)s into the container's group.
Result<void> write_cgroup_files(const std::string& dir, const CgroupFiles& files);

// name -> content for each readable file of `names` (missing ones left out).
proto::CgroupStats read_cgroup_files(const std::string& dir, const std::vector<std::string>& names);

// The eBPF instructions of a cgroup device program for `rules` (later
// rules win; nothing matched: denied), as raw struct bpf_insn bytes.
std::vector<uint64_t> device_program(const std::vector<proto::DeviceRule>& rules);
// Load it into the kernel (the verifier's log in the error).
Result<sys::Fd> load_device_program(const std::vector<proto::DeviceRule>& rules);

}  // namespace husk::agent
