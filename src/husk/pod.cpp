#include "husk/pod.h"

#include <cstdlib>

namespace husk {

namespace {

std::string annotation(const Spec& spec, const char* a, const char* b) {
    for (const char* k : {a, b})
        if (auto it = spec.annotations.find(k); it != spec.annotations.end()) return it->second;
    return "";
}

// /proc/<N>/ns/<anything>: N.
pid_t proc_pid(const std::string& path) {
    if (path.rfind("/proc/", 0) != 0) return 0;
    size_t e = path.find('/', 6);
    if (e == std::string::npos || e == 6 || path.compare(e, 4, "/ns/") != 0) return 0;
    std::string n = path.substr(6, e - 6);
    for (char c : n)
        if (c < '0' || c > '9') return 0;
    return pid_t(std::atol(n.c_str()));
}

// The spec's namespace types as the guest agent joins them.
const char* guest_type(const std::string& t) {
    if (t == "ipc" || t == "uts" || t == "pid" || t == "cgroup") return t.c_str();
    return nullptr;
}

}  // namespace

Result<std::optional<PodJoin>> resolve_pod(const Spec& spec, const std::vector<PodPeer>& peers, const NsIdentity& ns_identity) {
    auto by_id = [&](const std::string& id) -> const PodPeer* {
        for (const auto& p : peers)
            if (p.id == id) return &p;
        return nullptr;
    };
    auto sandbox_of = [](const PodPeer& p) { return p.sandbox.empty() ? p.id : p.sandbox; };

    std::string cri_type = annotation(spec, kCriContainerType, kCrioContainerType);
    std::string cri_sandbox = annotation(spec, kCriSandboxId, kCrioSandboxId);
    std::string type_key = spec.annotations.count(kCriContainerType) ? kCriContainerType : kCrioContainerType;
    if (!cri_type.empty() && cri_type != "sandbox" && cri_type != "container")
        return fail("annotations." + type_key + ": expected \"sandbox\" or \"container\", got \"" + cri_type + "\"", EINVAL);

    std::string target;  // the sandbox the namespaces belong to
    PodJoin out;
    for (size_t i = 0; i < spec.namespaces.size(); ++i) {
        const auto& n = spec.namespaces[i];
        if (n.path.empty()) continue;
        std::string field = "config.json: linux.namespaces[" + std::to_string(i) + "].path";
        bool net = n.type == "network";
        if (!net && !guest_type(n.type))
            return fail(field + ": joining an existing " + n.type + " namespace is not possible from inside a VM", EINVAL);
        const PodPeer* peer = nullptr;
        if (pid_t pid = proc_pid(n.path))
            for (const auto& p : peers)
                if (p.pid == pid) peer = &p;
        if (!peer && net)
            if (auto ident = ns_identity(n.path))
                for (const auto& p : peers)
                    if (p.sandbox.empty() && p.netns && *p.netns == *ident) peer = &p;
        if (!peer) {
            if (net) continue;  // a network namespace of its own making: the VM carries it
            return fail(field + ": " + n.path + " is not a namespace of a running husk container (joining an existing " +
                            n.type + " namespace is only possible within a pod's VM)", EINVAL);
        }
        std::string sb = sandbox_of(*peer);
        if (!target.empty() && target != sb)
            return fail(field + ": " + n.path + " is in the VM of sandbox " + sb + ", another namespace in that of " + target +
                            ": a container can join one pod", EINVAL);
        target = sb;
        if (!net) out.join[n.type] = peer->id;
    }
    if (cri_type == "sandbox") {
        if (!out.join.empty())
            return fail("config.json: a CRI sandbox container (annotations." + type_key + ") cannot join another's namespaces", EINVAL);
        return std::optional<PodJoin>();
    }
    if (cri_type == "container") {
        std::string key = spec.annotations.count(kCriSandboxId) ? kCriSandboxId : kCrioSandboxId;
        if (cri_sandbox.empty())
            return fail("config.json: annotations." + type_key + " is \"container\" but annotations." + std::string(kCriSandboxId) +
                            " names no sandbox", EINVAL);
        const PodPeer* sb = by_id(cri_sandbox);
        if (!sb) return fail("config.json: annotations." + key + ": sandbox " + cri_sandbox + " is not a running husk container", ESRCH);
        if (!target.empty() && target != sandbox_of(*sb))
            return fail("config.json: annotations." + key + " names sandbox " + cri_sandbox + ", its namespaces that of " + target, EINVAL);
        target = sandbox_of(*sb);
    }
    if (target.empty()) return std::optional<PodJoin>();
    out.sandbox = target;
    return std::optional<PodJoin>(std::move(out));
}

}  // namespace husk
