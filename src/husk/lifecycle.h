// The runc lifecycle, hypervisor-neutral: what each subcommand does, for
// the thin CLI in src/cli/ to call.
#pragma once
#include <sys/types.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/driver_choice.h"
#include "husk/log.h"
#include "husk/pod.h"
#include "husk/result.h"
#include "husk/sandbox.h"
#include "husk/driver_choice.h"
#include "husk/spec.h"
#include "husk/state.h"
#include "protocol/control.h"

namespace husk {

struct Globals {
    std::string root = default_state_root();
    log::Config log;
    bool systemd_cgroup = false;  // cgroupsPath is "slice:prefix:name"
    std::string hypervisor;  // --hypervisor; "" = the default (choose_hypervisor)
    std::vector<std::string> annotations;  // --annotation KEY=VALUE: a new container's, under its bundle's own
};

struct CreateOptions {
    std::string bundle = ".";
    std::string pid_file;
    std::string console_socket;
    int preserve_fds = 0;
    std::string restore_from;  // husk restore: the checkpoint image (absolute); the container comes up running
    std::string restore_work;  // ... and where its CRIU-style stats-restore goes (--work-path, else the image)
};

struct ExecOptions {
    std::string process_file;       // --process: an OCI process object
    std::vector<std::string> args;  // or the command line
    bool tty = false, tty_set = false;
    bool detach = false;
    std::string pid_file, console_socket, cwd, user;
    std::vector<std::string> env;
    std::vector<uint32_t> additional_gids;
    bool no_new_privs = false;
    int preserve_fds = 0;
    bool ignore_paused = false;
};

// The driver a new container gets, and why: its annotation, else
// --hypervisor (or HUSK_HYPERVISOR), else the config file's, else the
// automatic choice for `spec` (driver_choice.h; spec null: for no container
// in particular, as husk check and features report it).
Result<DriverChoice> container_hypervisor(const Globals& g, const Spec* spec = nullptr);
// What a new container of `hv` gets on this host for its share (the
// config file's `share`, virtiofsd, rootless), for husk features/check.
HostShare share_on_this_host(const Hypervisor& hv);
// The agent's channel a new container of `hv` gets on this host, and why
// (husk check and features).
struct HostChannel {
    std::string name;  // "vsock", "vsock (husk-vsock)", "hybrid vsock", "virtio-serial", "console line"
    bool vsock = false;
    std::string why;
};
HostChannel channel_on_this_host(const Hypervisor& hv);

// Fork the shim and return once the container is created (or failed,
// leaving nothing behind). Returns the shim's pid, which is our child.
Result<pid_t> create_container(const Globals& g, const std::string& id, const CreateOptions& o);
Result<void> start_container(const Globals& g, const std::string& id);
Result<void> kill_container(const Globals& g, const std::string& id, int sig, bool all);
// Stop (pause=true) or restart the container's VM; state says paused.
Result<void> pause_container(const Globals& g, const std::string& id, bool pause);
// The container's processes as its pid namespace numbers them.
Result<std::vector<proto::PsProcess>> ps_container(const Globals& g, const std::string& id);
// Apply a LinuxResources object to the container's guest cgroup (runc
// update). Returns the warnings for what the guest cannot apply.
Result<std::vector<std::string>> update_container(const Globals& g, const std::string& id, const nlohmann::json& resources);
// The guest cgroup's stats files, name -> content (runc_stats shapes them).
Result<proto::CgroupStats> stats_container(const Globals& g, const std::string& id);
Result<void> delete_container(const Globals& g, const std::string& id, bool force);
// husk checkpoint: the running container's VM saved into `image_path`
// (husk/checkpoint.h); then it is deleted, as runc destroys it, unless
// `leave_running`. husk restore is run_container with restore_from set.
// Its figures go to `work_path`/stats-dump (the image when empty), as
// CRIU's do under runc.
Result<void> checkpoint_container(const Globals& g, const std::string& id, const std::string& image_path,
                                  const std::string& work_path, bool leave_running);
// create + start + (unless detach) wait and mirror the exit status.
// Returns a wait status for the CLI to reproduce.
Result<int> run_container(const Globals& g, const std::string& id, const CreateOptions& o, bool detach, bool keep);
// Run a process in the container. Returns a wait status: the process's
// own in the foreground; 0 once it started with --detach (the pid file
// then names a process whose exit status will be the exec'd one's).
Result<int> exec_container(const Globals& g, const std::string& id, const ExecOptions& o);
// Relative paths are taken from our cwd, as runc takes them.
Result<std::string> absolute(const std::string& path);
// --pid-file: written atomically (callers poll for it).
Result<void> write_pid_file(const std::string& path, pid_t pid);
// Where a container's requests go: its own shim, or (a pod member) its
// sandbox's, with req["container"] naming it.
StatePaths shim_route(const Globals& g, const State& st, proto::ControlRequest& req);

// Shared by lifecycle's units (lifecycle.cpp, pod_member.cpp).
// A container's directory as create makes it: <root>/<id> (or "container
// with id exists"), locked, its first state and host cgroups (not yet
// written); undo() removes them again.
struct NewContainer {
    StatePaths paths;
    State st;
    std::optional<ContainerLock> lock;
    void undo();
};
Result<NewContainer> begin_container(const Globals& g, const std::string& id, const std::string& bundle, const Spec& spec);
// A container's first state: creating, its bundle, spec annotations and hooks.
State new_state(const std::string& id, const std::string& bundle, const Spec& spec);
std::string owner_name();
Result<std::vector<std::string>> host_cgroups(const Globals& g, const Spec& spec, const std::string& id);
// A cpuset names host CPUs (the VMM is pinned to them): one the host does
// not have fails, as runc's write to cpuset.cpus would.
Result<void> check_host_cpus(const std::string& list);
// The VM's bounds on the host (host_cgroup_limits); a rootless caller
// without delegation gets a warning instead, as with rootless runc.
Result<void> apply_host_limits(const nlohmann::json& resources, std::optional<uint64_t> vm_bound,
                               const std::vector<std::string>& dirs);
// The running husk containers under --root, as resolve_pod sees them.
Result<std::vector<PodPeer>> pod_peers(const Globals& g);
std::optional<std::pair<dev_t, ino_t>> namespace_identity(const std::string& path);
// `husk create` of a container that joins the sandbox `pod` names.
Result<pid_t> create_member(const Globals& g, const std::string& id, const std::string& bundle, const Spec& spec,
                            const PodJoin& pod, const CreateOptions& o);
Result<State> load_state(const Globals& g, const std::string& id);
Result<std::vector<State>> list_containers(const Globals& g);

}  // namespace husk
