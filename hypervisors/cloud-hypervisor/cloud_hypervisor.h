// Cloud Hypervisor driver: a VmConfig document sent to vm.create, then
// vm.boot, through its REST API on a unix socket (the published OpenAPI
// definition); channel over hybrid vsock; the rootfs over virtio-fs
// (virtiofsd, jailed: virtiofsd.h), or on a virtio-blk disk where there is
// no virtiofsd or the caller is not root. VM templates through vm.snapshot
// and vm.restore (docs/design.md, "VM templates").
// Needs KVM; boots the uncompressed vmlinux.
#pragma once
#include <string>
#include <vector>

#include "husk/hypervisor.h"
#include "hypervisors/api_vmm.h"

namespace husk::cloud_hypervisor {

// `cloud-hypervisor` on PATH; HUSK_CLOUD_HYPERVISOR overrides.
std::string binary_path();
inline constexpr const char* kApiSocket = "api.sock";

// VmConfig -> the API calls that create and boot the VM. Pure.
std::vector<ApiCall> translate(const VmConfig& cfg);
// A template-shaped VM's snapshot, restore and hot-add calls. Pure.
ApiTemplateCalls template_calls(const VmConfig& cfg);
std::vector<std::string> command(const std::string& binary);

class CloudHypervisor : public ApiHypervisor {
public:
    std::string name() const override { return "cloud-hypervisor"; }
    std::string unavailable() const override;
    Capabilities capabilities() const override;
    std::string template_shape(const VmConfig& cfg) const override;
    std::string vm_shape(const VmConfig& cfg) const override;

protected:
    ApiVmmLaunch plan(const VmConfig& cfg, const std::string& log_path) const override;
};

}  // namespace husk::cloud_hypervisor
