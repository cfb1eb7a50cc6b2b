// Cgroups, twice over. In the guest the container gets a cgroup v2 group
// of its own, whose files husk computes here from linux.resources (runc's
// conversions from the OCI values). On the host the shim and its VMM go
// into the cgroup the caller named in cgroupsPath, so host accounting
// (podman stats, systemd, the caller's limits) still sees the container.
#pragma once
#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "protocol/agent.h"

namespace husk {

struct CgroupFiles {
    // (file name in the container's guest cgroup, value), in write order.
    std::vector<std::pair<std::string, std::string>> writes;
    // What the guest cannot apply (a VM has no host block devices, v1-only
    // knobs): the shim logs these, as runc warns.
    std::vector<std::string> warnings;
};

// Translate a checked LinuxResources object. `at` is its JSON path for
// messages ("linux.resources", or "" for `update --resources`).
Result<CgroupFiles> guest_cgroup_files(const nlohmann::json& resources, const std::string& at);

// The device rules the guest enforces (with an eBPF device program, as
// runc does on cgroup v2): the spec's rules, then runc's defaults (the
// standard nodes, ptys, mknod of anything). Later rules win.
std::vector<proto::DeviceRule> guest_device_rules(const nlohmann::json& resources);

// `husk events` data from the guest cgroup's files (name -> content), in
// the shape of runc's types.Stats.
nlohmann::ordered_json runc_stats(const proto::CgroupStats& files);
// OOM kills so far (memory.events oom_kill) in those files.
uint64_t oom_kills(const proto::CgroupStats& files);
// One figure of those files: its number ("max": UINT64_MAX), or nullopt
// if the file is absent or holds no number.
std::optional<uint64_t> cgroup_figure(const proto::CgroupStats& files, const std::string& name);
// The cgroup files the guest reads for runc_stats.
const std::vector<std::string>& stats_files();

// Host cgroup directories for cgroupsPath: one per mounted hierarchy
// (v1 controllers and the v2 tree). A relative path is under the
// caller's own cgroup; "slice:prefix:name" (systemd) becomes the
// directories systemd would use. Pure: takes /proc/self/mountinfo and
// /proc/self/cgroup as text.
Result<std::vector<std::string>> host_cgroup_dirs(const std::string& cgroups_path, const std::string& mountinfo,
                                                  const std::string& self_cgroup);
// Create them (cpuset ones inherit cpus and mems from their parent, as v1
// needs before a process may join).
Result<void> make_host_cgroups(const std::vector<std::string>& dirs);
// Remove them, deepest first; the ones that are busy or gone are left.
void remove_host_cgroups(const std::vector<std::string>& dirs);
// Wait up to `grace` for the processes in them (but the caller) to go,
// then SIGKILL what is left until none is or `timeout` passes; returns how
// many signals went. What `delete` does before removing a container's
// groups, as runc's delete kills what its cgroup holds: a sandbox's shim that handed its VM over to a fork of
// itself (its heir, in no state file) is still in them while it serves
// the members, and would keep the groups busy.
size_t kill_host_cgroup_procs(const std::vector<std::string>& dirs, std::chrono::milliseconds grace,
                              std::chrono::milliseconds timeout);

// What bounds the VM on the host, in those directories: the CPU limits as
// the spec says them (v1 cpu.shares/cfs_*, v2 cpu.weight/cpu.max), the
// cpuset, and, when the spec limits memory, `vm_bound` bytes for the whole
// VM (its RAM and its VMM's own memory). The container's own limits are
// the guest's; these keep host tools (kubelet, docker stats, systemd) and
// the host's scheduler true to them. (path, value) pairs in write order;
// `has` tells which files a directory has (injected for tests).
std::vector<std::pair<std::string, std::string>> host_cgroup_limits(const nlohmann::json& resources,
                                                                    std::optional<uint64_t> vm_bound,
                                                                    const std::vector<std::string>& dirs,
                                                                    bool (*has)(const std::string&));
Result<void> write_host_cgroup_limits(const std::vector<std::pair<std::string, std::string>>& writes);

}  // namespace husk
