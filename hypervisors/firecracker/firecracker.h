// Firecracker driver: configured through its REST API on a unix socket
// (the published swagger definition, v1.x), channel over hybrid vsock,
// rootfs on a virtio-blk disk (Firecracker has no shared filesystem).
// Needs KVM; the guest kernel is the uncompressed vmlinux.
#pragma once
#include <string>
#include <vector>

#include "husk/hypervisor.h"
#include "hypervisors/api_vmm.h"

namespace husk::firecracker {

// `firecracker` on PATH; HUSK_FIRECRACKER overrides.
std::string binary_path();
inline constexpr const char* kApiSocket = "api.sock";

// VmConfig -> the API calls that configure and start the microVM. Pure.
// A template's (VmConfig::template_shape) has a placeholder for each disk
// and its NICs with the template's MACs (templates::mac).
std::vector<ApiCall> translate(const VmConfig& cfg);
// A template's save and restore (/snapshot/create, /snapshot/load) and
// each disk given in place of its placeholder (PATCH /drives). Pure.
ApiTemplateCalls template_calls(const VmConfig& cfg);
// The VMM's command line.
std::vector<std::string> command(const std::string& binary, const std::string& log_path);

class FirecrackerHypervisor : public ApiHypervisor {
public:
    std::string name() const override { return "firecracker"; }
    Capabilities capabilities() const override;
    std::string template_shape(const VmConfig& cfg) const override;
    std::string vm_shape(const VmConfig& cfg) const override;
    std::string unavailable() const override;

protected:
    ApiVmmLaunch plan(const VmConfig& cfg, const std::string& log_path) const override;
};

}  // namespace husk::firecracker
