// Which driver a container gets, and why (issue 28; the figures behind it
// are bench/drivers', in bench/README.md and docs/design.md "Which driver").
//
// A driver named by the container's annotation, --hypervisor (or
// HUSK_HYPERVISOR) or the config file is that driver. Otherwise ("auto",
// the default) husk decides per host and per container:
//   - KVM works: qemu under KVM.
//   - no KVM: UML, whose guest runs the container's own code natively (a
//     Debian python/sqlite/find workload in 0.40x-0.47x QEMU TCG's time,
//     0.70x-0.78x the memory, exec faster), for a container that needs nothing
//     UML lacks (uml_lacks); else qemu under TCG, which starts from a VM
//     template 1.6x-2x as fast and takes stdin far faster.
#pragma once
#include <functional>
#include <map>
#include <string>

#include "husk/result.h"
#include "husk/spec.h"

namespace husk {

// The value of --hypervisor / the config's `hypervisor` that asks for the
// automatic choice (as does leaving it unset).
inline constexpr const char* kAutoDriver = "auto";

struct DriverChoice {
    std::string name;  // a hypervisor_names() entry
    std::string why;   // one clause: "no usable KVM (...); the container needs nothing UML lacks"
    bool automatic = false;  // husk chose it (nothing named a driver)
};

// What the automatic choice looks at on this host.
struct DriverHost {
    bool kvm = false;
    std::string kvm_why;          // detect_accel_info's reason
    std::string qemu_unavailable; // "" when qemu runs here
    std::string uml_unavailable;  // "" when UML runs here
};
DriverHost this_host_drivers();

// What `spec` asks for that the UML driver cannot give it, as a reason
// ("runs as uid 1000: UML's hostfs would make the files it creates root's");
// "" when nothing.
std::string uml_lacks(const Spec& spec);

// The container's driver: its annotation, else `global` (--hypervisor or the
// config file's, `origin` says which; "" or "auto": the automatic choice
// for `spec`, or for no container in particular when spec is null). An
// unknown name is an error naming where it came from. `host` is called
// only for the automatic choice (this_host_drivers may probe KVM).
Result<DriverChoice> choose_driver(const std::map<std::string, std::string>& annotations, const std::string& global,
                                   const std::string& origin, const Spec* spec,
                                   const std::function<DriverHost()>& host = this_host_drivers);

// A restore's driver: the one its checkpoint image was saved from
// (`image_driver`), unless something named another (which the shim then
// refuses, saying both).
DriverChoice driver_for_restore(DriverChoice chosen, const std::string& image_driver);

}  // namespace husk
