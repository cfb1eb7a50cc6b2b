// Lines from QEMU's QMP socket (QEMU is sandboxed, but a confused or
// compromised VMM must not take the shim down with it).
#include <cstddef>
#include <cstdint>
#include <string>

#include "hypervisors/qemu/qmp.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string line(reinterpret_cast<const char*>(data), size);
    (void)husk::qemu::parse_qmp_line(line);
    return 0;
}
