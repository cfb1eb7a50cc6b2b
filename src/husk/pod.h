// Pods: which VM a container goes in. A container starts a sandbox (a VM
// of its own, as a lone container does) or joins a running one, decided
// from its spec alone, as the systems husk descends from do (rkt's KVM
// stage1 and virtcontainers run a whole pod in one VM):
//   - CRI annotations: io.kubernetes.cri.container-type "sandbox" starts
//     one, "container" joins io.kubernetes.cri.sandbox-id (CRI-O's
//     io.kubernetes.cri-o.ContainerType / SandboxID the same);
//   - a linux.namespaces[].path (net, ipc, uts, pid, cgroup) that names a
//     namespace of a running husk container (/proc/<its pid>/ns/<type>,
//     or, for net, the namespace its VM carries) joins that container's
//     sandbox, as podman pods and docker's `container:NAME` give them;
//   - anything else: a sandbox of its own.
// The namespaces a member names are then joined inside the guest.
#pragma once
#include <sys/types.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "husk/result.h"
#include "husk/spec.h"

namespace husk {

inline constexpr const char* kCriContainerType = "io.kubernetes.cri.container-type";
inline constexpr const char* kCriSandboxId = "io.kubernetes.cri.sandbox-id";
inline constexpr const char* kCrioContainerType = "io.kubernetes.cri-o.ContainerType";
inline constexpr const char* kCrioSandboxId = "io.kubernetes.cri-o.SandboxID";

// A running husk container, as the rules see it.
struct PodPeer {
    std::string id;
    pid_t pid = 0;            // its host process (shim, or a member's relay)
    std::string sandbox;      // the sandbox it is a member of; "" for a sandbox
    // The network namespace its VM carries (a sandbox's), as (dev, inode).
    std::optional<std::pair<dev_t, ino_t>> netns;
};

struct PodJoin {
    std::string sandbox;                      // the sandbox container's id
    std::map<std::string, std::string> join;  // "ipc"/"uts"/"pid"/"cgroup" -> the container whose namespace it shares
};

// (dev, inode) of a namespace file, if it is one (injected for tests).
using NsIdentity = std::function<std::optional<std::pair<dev_t, ino_t>>(const std::string&)>;

// nullopt: a sandbox of its own. An error names the spec field at fault.
Result<std::optional<PodJoin>> resolve_pod(const Spec& spec, const std::vector<PodPeer>& peers, const NsIdentity& ns_identity);

}  // namespace husk
