// The husk.* words of the guest kernel's command line: what the host tells
// the agent before there is a channel to say anything on. One struct,
// written by the host (sandbox.cpp fills what the container needs, the
// driver its own: the channel, the VMM, UML's hostfs root) and read by
// the agent at boot strictly: a husk.* word it does not know, or a value
// it does not take, is an error on the console, never a default.
#pragma once
#include <string>

#include "husk/result.h"

namespace husk::proto {

struct BootParams {
    bool debug = false;          // husk.debug=1: the agent's lines on the console
    bool probe = false;          // husk.probe=1: print the probe marker, power off
    bool template_boot = false;  // husk.template=1: wait to be attached (boot.h)
    std::string share{};         // husk.share=: "" (9p), "virtiofs" or "disk"
    std::string vmm{};           // husk.vmm=: "" (QEMU), "uml", "firecracker", "cloud-hypervisor"
    bool net = false;            // husk.net=1: NICs to bring up (their driver)
    bool mem = false;            // husk.mem=1: memory may be hot-plugged later
    std::string channel{};       // husk.channel=: "" (none), "serial", "vsock" or "ttyN" (UML's line)
    std::string hostfs{};        // husk.hostfs=: UML's hostfs root, an absolute host path
    bool operator==(const BootParams&) const = default;
};

// " husk.a=b husk.c=d": the words that are set, in a fixed order.
std::string to_cmdline(const BootParams& b);
// From the whole command line (other words are the kernel's).
Result<BootParams> boot_params_from_cmdline(const std::string& cmdline);

}  // namespace husk::proto
