// Container state on disk: <root>/<id>/state.json, replaced atomically,
// and a flock on <root>/<id> around every change.
#pragma once
#include <sys/types.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/paths.h"
#include "husk/result.h"
#include "sys/fd.h"

namespace husk {

namespace status {
inline constexpr const char* kCreating = "creating";
inline constexpr const char* kCreated = "created";
inline constexpr const char* kRunning = "running";
inline constexpr const char* kStopped = "stopped";
inline constexpr const char* kPaused = "paused";
}  // namespace status

struct State {
    std::string id;
    std::string bundle;
    std::string rootfs;
    std::string status = status::kCreating;
    std::string created;  // RFC 3339, UTC
    std::string owner;
    pid_t pid = 0;  // the shim
    unsigned long long pid_start = 0;
    pid_t vmm_pid = 0;
    unsigned long long vmm_start = 0;
    std::optional<int> exit_code;    // set when stopped normally
    std::optional<int> exit_signal;  // set when killed by a signal
    std::map<std::string, std::string> annotations;
    nlohmann::json hooks;  // config.json's hooks, for start and delete to run
    std::vector<std::string> cgroups;  // host cgroup dirs the shim and VMM run in (cgroupsPath)
    // A network namespace given by path outlives us: the links in it that
    // carry our tc redirects, for delete to clean if the shim could not.
    std::string netns;
    std::vector<std::string> net_links;
    std::vector<std::string> net_taps;  // persistent taps made there (a VMM that opens by name)
    // A container that joined another's VM (a pod member): that sandbox
    // container's id. Its pid is then its relay's, and it has no VMM.
    std::string sandbox;
};

nlohmann::json state_to_json(const State& s);
Result<State> state_from_json(const nlohmann::json& j);
Result<State> read_state(const StatePaths& p);
Result<void> write_state(const StatePaths& p, const State& s);

// Status as callers must see it: a container whose shim is gone is
// stopped, whatever the file last said.
std::string effective_status(const State& s);
// The OCI state document (what hooks read).
nlohmann::json oci_state(const State& s);
// The same as `husk state` and `list --format json` print it: in runc's
// key order (its containerState struct: ociVersion, id, pid, status,
// bundle, rootfs, created, annotations when there are any, owner).
nlohmann::ordered_json runc_state(const State& s);

std::string now_rfc3339();

// An exclusive lock on an existing container directory. Fails with ENOENT
// if the container does not exist, or was deleted while we waited.
class ContainerLock {
public:
    static Result<ContainerLock> acquire(const StatePaths& p);
    // Lock a directory that this process just created.
    static Result<ContainerLock> acquire_new(const StatePaths& p);
    int fd() const { return fd_.get(); }

private:
    static Result<ContainerLock> lock(const StatePaths& p, sys::Fd fd);
    sys::Fd fd_;
};

}  // namespace husk
