// Which driver a container gets, and why (driver_choice.h).
#include "husk/driver_choice.h"

#include <algorithm>
#include <cerrno>
#include <utility>

#include "husk/hypervisor.h"
#include "husk/pod.h"
#include "husk/sandbox.h"
#include "husk/system_image.h"

namespace husk {

DriverHost this_host_drivers() {
    DriverHost h;
    auto accel = detect_accel_info();
    h.kvm = accel.accel == Accel::Kvm;
    h.kvm_why = accel.why;
    h.qemu_unavailable = make_hypervisor("qemu")->unavailable();
    h.uml_unavailable = make_hypervisor("uml")->unavailable();
    return h;
}

namespace {

bool has_cap(const SpecProcess& p, const char* cap) {
    if (!p.capabilities) return true;  // absent: it keeps what it has (a root process: all)
    auto it = p.capabilities->find("bounding");
    if (it == p.capabilities->end()) return true;
    return std::find(it->second.begin(), it->second.end(), cap) != it->second.end();
}

}  // namespace

std::string uml_lacks(const Spec& spec) {
    for (const char* k : {kCriContainerType, kCrioContainerType})
        if (auto it = spec.annotations.find(k); it != spec.annotations.end() && it->second == "sandbox")
            return "is a pod's sandbox: the members that join its VM may need what UML lacks";
    if (spec.annotations.count(system_image::kAnnotationKernel))
        return std::string("boots the image's own kernel (") + system_image::kAnnotationKernel +
               "), and UML boots a UML kernel only";
    if (spec.annotations.count(kAnnotationShare))
        return std::string("has annotation ") + kAnnotationShare + ", a share UML has not (its share is hostfs)";
    // A disk is what a checkpoint needs (README), and UML cannot save a VM.
    if (auto it = spec.annotations.find(kAnnotationRootfs); it != spec.annotations.end() && it->second == "disk")
        return std::string("has its rootfs on a disk (") + kAnnotationRootfs +
               "=disk), which is for checkpoints, and UML cannot checkpoint";
    // hostfs creates and chowns as the UML process: what a container's
    // non-root user creates is root's, and then not its own to chmod or
    // (mode 0644) to write. A process that is root and cannot become anyone
    // else never meets that.
    if (spec.process) {
        const auto& u = spec.process->user;
        if (u.uid != 0 || u.gid != 0)
            return "runs as uid " + std::to_string(u.uid) + " gid " + std::to_string(u.gid) +
                   ": UML's hostfs would make the files it creates root's";
        if (has_cap(*spec.process, "CAP_SETUID") || has_cap(*spec.process, "CAP_SETGID"))
            return "may change its user (CAP_SETUID or CAP_SETGID in its bounding set): UML's hostfs would make the files "
                   "another user creates root's";
    }
    if (spec.has_namespace("user") || !spec.uid_mappings.empty())
        return "maps user ids (a user namespace): UML's hostfs keeps the host's ownership";
    if (spec.cpu_quota && *spec.cpu_quota > 0 && spec.cpu_period && *spec.cpu_period > 0 &&
        uint64_t(*spec.cpu_quota) > *spec.cpu_period)
        return "asks for more than one CPU (linux.resources.cpu.quota): UML's guest has one";
    if (!spec.cpuset_cpus.empty())
        if (auto cpus = parse_cpu_list(spec.cpuset_cpus); cpus && cpus->size() > 1)
            return "asks for " + std::to_string(cpus->size()) + " CPUs (linux.resources.cpu.cpus): UML's guest has one";
    // A network namespace to join is no reason: UML's NIC (the vector
    // driver's tap transport, offloads on) moves as much as QEMU's.
    return "";
}

DriverChoice driver_for_restore(DriverChoice chosen, const std::string& image_driver) {
    if (!chosen.automatic || image_driver.empty()) return chosen;
    return DriverChoice{image_driver, "the checkpoint image is of a " + image_driver + " VM", true};
}

Result<DriverChoice> choose_driver(const std::map<std::string, std::string>& annotations, const std::string& global,
                                   const std::string& origin, const Spec* spec,
                                   const std::function<DriverHost()>& probe) {
    std::string name = global, from = origin;
    if (auto it = annotations.find(kAnnotationHypervisor); it != annotations.end())
        name = it->second, from = std::string("annotation ") + kAnnotationHypervisor;
    const auto& known = hypervisor_names();
    if (std::find(known.begin(), known.end(), name) != known.end()) return DriverChoice{name, from + " says " + name};
    if (!(name == kAutoDriver || (name.empty() && from == origin))) {
        std::string list = kAutoDriver;
        for (const auto& k : known) list += ", " + k;
        return fail(from + ": unknown hypervisor \"" + name + "\" (known: " + list + ")", EINVAL);
    }
    auto chose = [](std::string name, std::string why) { return DriverChoice{std::move(name), std::move(why), true}; };
    const DriverHost host = probe();
    if (host.kvm) return chose("qemu", "KVM works here (" + host.kvm_why + ")");
    std::string no_kvm = "no usable KVM (" + host.kvm_why + ")";
    if (!host.uml_unavailable.empty())
        return chose("qemu", no_kvm + ": QEMU under TCG (UML, faster for most work here, is not: " + host.uml_unavailable + ")");
    if (!host.qemu_unavailable.empty()) return chose("uml", no_kvm + " and no QEMU (" + host.qemu_unavailable + ")");
    if (!spec)
        return chose("qemu", no_kvm + ": UML for a container that needs nothing it lacks (root, no way to change user, one "
                                      "CPU, no user namespace, no disk rootfs, not a pod's sandbox), else QEMU under TCG");
    if (auto lacks = uml_lacks(*spec); !lacks.empty())
        return chose("qemu", no_kvm + ": QEMU under TCG, since the container " + lacks);
    return chose("uml", no_kvm + ": UML runs the container's own code natively, and it needs nothing UML lacks");
}

}  // namespace husk
