// config.json from anywhere: parse and validate, then the translations a
// valid spec goes through before any VM exists. Nothing may crash, hang or
// throw; every rejection is an Error value.
#include <cstddef>
#include <cstdint>
#include <string>

#include "husk/driver_choice.h"
#include "husk/cgroups.h"
#include "husk/hypervisor.h"
#include "husk/pod.h"
#include "husk/sandbox.h"
#include "husk/spec.h"
#include "husk/vm_template.h"

using namespace husk;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto spec = parse_spec(text);
    (void)parse_process_file(text, "process.json");
    (void)parse_resources_file(text, "resources.json");
    if (!spec) return 0;
    auto res = spec->resources.is_object() ? spec->resources : nlohmann::json::object();
    (void)guest_cgroup_files(res, "linux.resources");
    (void)guest_device_rules(res);
    (void)vm_memory_mib(*spec);
    (void)vm_vcpus(*spec, 2);
    if (spec->process) (void)agent_process_params(*spec->process);
    (void)parse_cpu_list(spec->cpuset_cpus);
    // Every annotation husk reads, as create checks them before anything
    // starts: the driver, the share, the boot timeout, templates, where the
    // rootfs goes, and the pod rules (one running sandbox to join, whose
    // namespaces every path names).
    (void)choose_driver(spec->annotations, "", "--hypervisor", &*spec, [] { return DriverHost{}; });
    (void)check_share_annotation(*spec);
    (void)boot_timeout_ms(*spec);
    (void)templates::choose(spec->annotations, std::nullopt);
    (void)rootfs_on_disk(*spec, "qemu", true);
    (void)rootfs_on_disk(*spec, "firecracker", false);
    std::vector<PodPeer> peers{{"sb", 1, "", std::pair<dev_t, ino_t>{1, 2}}, {"member", 2, "sb", std::nullopt}};
    (void)resolve_pod(*spec, peers, [](const std::string& path) -> std::optional<std::pair<dev_t, ino_t>> {
        if (path.rfind("/proc/", 0) != 0) return std::nullopt;
        return std::pair<dev_t, ino_t>{1, path.size() % 3};
    });
    return 0;
}
