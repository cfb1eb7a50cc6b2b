// User Mode Linux driver: the guest kernel is a host process (Debian's
// user-mode-linux package), so it needs no hardware virtualisation and no
// root. The rootfs is shared through hostfs, the channel is a console line
// on a unix socket the driver connects for it, pause goes through the
// mconsole. It always runs jailed (hypervisors/jail.h): hostfs can open any
// host path the UML process can see.
#pragma once
#include <string>
#include <vector>

#include "husk/hypervisor.h"

namespace husk::uml {

// Debian's UML kernel; HUSK_UML overrides (kernel_path()).
inline constexpr const char* kDefaultKernel = "/usr/bin/linux.uml";
std::string kernel_path();

// uml_dir is the jail's /vmm (jail.h): the mconsole socket is
// <workdir>/vmm/<umid>/mconsole on the host.
inline constexpr const char* kUmid = "husk";
// UML "reboots" (a panic, with panic=-1) by exec'ing its argv[0] again. Our
// argv[0] names nothing in the jail, so that exec fails and UML exits, as
// QEMU does with -no-reboot; the kernel itself is exec'd by path.
inline constexpr const char* kArgv0 = "husk-uml";
// fds in the UML process.
constexpr int kConsoleFd = 3;
constexpr int kChannelFd = 4;
constexpr int kFirstNicFd = 5;

// VmConfig (as its jail sees it: jailed_config) -> UML's command line
// (its kernel command line too). Pure.
std::vector<std::string> translate(const VmConfig& cfg);

class UmlHypervisor : public Hypervisor {
public:
    std::string name() const override { return "uml"; }
    Capabilities capabilities() const override;
    std::string guest_kernel() const override { return kernel_path(); }
    std::string unavailable() const override;
    Result<std::unique_ptr<Vm>> launch(const VmConfig& cfg, const std::string& workdir,
                                       const std::string& log_path) override;
};

}  // namespace husk::uml
