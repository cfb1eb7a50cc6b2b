// Answers from a REST-API VMM (Firecracker, Cloud Hypervisor) and its
// hybrid vsock socket: a confused or compromised VMM must not take the
// shim down. Every prefix is parsed too, as the client sees it arrive.
#include <cstddef>
#include <cstdint>
#include <string>

#include "hypervisors/api_vmm.h"
#include "hypervisors/http.h"
#include "hypervisors/vsock.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string buf(reinterpret_cast<const char*>(data), size);
    for (size_t cut = 0; cut <= buf.size(); cut += 1 + cut / 8) (void)husk::http::parse_response(std::string_view(buf).substr(0, cut), false);
    if (auto r = husk::http::parse_response(buf, true); r && *r) (void)husk::api_error_message((*r)->body);
    (void)husk::parse_hybrid_vsock_reply(buf);
    return 0;
}
