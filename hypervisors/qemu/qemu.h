// QEMU driver: VmConfig -> argv (pure), launch, and QMP control.
#pragma once
#include <string>
#include <vector>

#include "husk/hypervisor.h"

namespace husk::qemu {

struct Options {
    std::string binary = "qemu-system-x86_64";
    std::string machine = "microvm";  // or "q35,...": picks virtio-mmio vs -pci
    bool microvm() const { return machine.rfind("microvm", 0) == 0; }
    bool sandbox = true;  // QEMU's seccomp filter (-sandbox on,...)
    // Run in the VMM jail (hypervisors/jail.h), configured with the jail's
    // paths. Only the KVM probe, which boots husk's own image with nothing
    // shared for a moment, runs without.
    bool jail = true;
    // microvm under TCG (HUSK_TEST_KVM_SHAPE): the host's TSC rate, which
    // TCG's guest TSC runs at, given to the guest kernel. microvm has no
    // HPET or PM timer, and under load the PIT calibration fails ("tsc:
    // Unable to calibrate against PIT") and the boot hangs (6 of 12 boots,
    // two at a time, here). 0: nothing passed (KVM guests use kvm-clock).
    unsigned tcg_tsc_khz = 0;
};

// The console is expected at fd 3 in the VMM; taps given as fds at 4, 5...
constexpr int kConsoleFd = 3;
constexpr int kFirstNicFd = 4;
// A template to restore (VmConfig::incoming_fd), above any NIC's.
constexpr int kIncomingFd = 90;
// The PCIe root ports a template's later devices are plugged into: the
// share's (virtio-fs) first, then one for each NIC, and husk-vsock's
// device last.
constexpr unsigned kHotplugPorts = 5;
constexpr unsigned kVsockHotplugPort = kHotplugPorts - 1;  // Vm::add_vsock's
std::string hotplug_port(unsigned i);  // husk.hp<i>
// The virtio-mem device of a VM that can be given memory while it runs.
constexpr const char* kHotplugDevice = "hotmem0";

// VmConfig (jailed_config's, when it runs jailed) -> QEMU's argv. Pure.
std::vector<std::string> translate(const VmConfig& cfg, const Options& opt);

class QemuHypervisor : public Hypervisor {
public:
    explicit QemuHypervisor(Options opt) : opt_(std::move(opt)) {}
    std::string name() const override { return "qemu"; }
    Capabilities capabilities() const override;
    std::string guest_kernel() const override;
    std::string unavailable() const override;
    std::string template_shape(const VmConfig& cfg) const override;
    std::string vm_shape(const VmConfig& cfg) const override;
    Result<std::unique_ptr<Vm>> launch(const VmConfig& cfg, const std::string& workdir,
                                       const std::string& log_path) override;

private:
    // `tag`, the argv QEMU runs `cfg` with (as its jail sees it, when
    // jailed: the same for every container of one shape), its files; for
    // a `booted` guest (a checkpoint's) not what only a boot reads: the
    // kernel command line, the kernel and the initrd.
    std::string argv_shape(const std::string& tag, const VmConfig& cfg, bool booted) const;
    Options opt_;
};

}  // namespace husk::qemu
