// config.json from anywhere: parse and validate, then the translations a
// valid spec goes through before any VM exists. Nothing may crash, hang or
// throw; every rejection is an Error value.
#include <cstddef>
#include <cstdint>
#include <string>

#include "husk/cgroups.h"
#include "husk/sandbox.h"
#include "husk/spec.h"

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
    return 0;
}
