// Which drivers exist, and what this host can run.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "husk/defaults.h"
#include "husk/hypervisor.h"
#include "hypervisors/qemu/qemu.h"

namespace husk {

Accel detect_accel() {
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) return Accel::Tcg;
    int v = ::ioctl(fd, KVM_GET_API_VERSION, 0);
    ::close(fd);
    return v == KVM_API_VERSION ? Accel::Kvm : Accel::Tcg;
}

bool vsock_available() { return ::access("/dev/vhost-vsock", R_OK | W_OK) == 0; }

const char* accel_name(Accel a) { return a == Accel::Kvm ? "kvm" : "tcg"; }

std::unique_ptr<Hypervisor> make_hypervisor(const std::string& name) {
    if (name == "qemu" || name.empty()) {
        qemu::Options o;
        o.binary = defaults::kQemuBinary;
        o.machine = detect_accel() == Accel::Kvm ? defaults::kQemuMachineKvm : defaults::kQemuMachineTcg;
        return std::make_unique<qemu::QemuHypervisor>(o);
    }
    return nullptr;
}

}  // namespace husk
