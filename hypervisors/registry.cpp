// Which drivers exist, and what this host can run.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <poll.h>
#include <sys/file.h>

#include <algorithm>
#include <chrono>
#include <optional>

#include <nlohmann/json.hpp>

#include "husk/defaults.h"
#include "husk/log.h"
#include "husk/paths.h"
#include "sys/sys.h"
#include "husk/hypervisor.h"
#include "hypervisors/qemu/qemu.h"
#include "hypervisors/uml/uml.h"
#include "hypervisors/firecracker/firecracker.h"
#include "hypervisors/cloud-hypervisor/cloud_hypervisor.h"

namespace husk {

namespace {

bool kvm_opens() {
    int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) return false;
    int v = ::ioctl(fd, KVM_GET_API_VERSION, 0);
    ::close(fd);
    return v == KVM_API_VERSION;
}

// Boot the real guest under KVM until the agent's probe marker, or not.
AccelInfo probe_kvm() {
    std::string kernel = find_guest_kernel(), initrd = find_guest_initrd();
    if (!sys::exists(kernel) || !sys::exists(initrd)) return {Accel::Tcg, "no guest image to probe KVM with"};
    auto pipe = sys::pipe(O_CLOEXEC);
    if (!pipe) return {Accel::Tcg, "probe: " + pipe.error().message};
    VmConfig cfg;
    cfg.kernel = kernel;
    cfg.initrd = initrd;
    cfg.cmdline = std::string(defaults::kKernelCmdline) + " quiet";
    cfg.boot.probe = true;
    cfg.memory_mib = 128;
    cfg.accel = Accel::Kvm;
    cfg.channel.kind = ChannelKind::None;
    cfg.console_fd = pipe->second.get();
    qemu::Options o;
    o.binary = defaults::kQemuBinary;
    o.machine = defaults::kQemuMachineKvm;
    o.jail = false;  // nothing shared, no sockets, our own image, a moment: and no workdir to jail it in
    qemu::QemuHypervisor hv(o);
    auto vm = hv.launch(cfg, "/", "/dev/null");
    pipe->second.reset();
    if (!vm) return {Accel::Tcg, "probe: " + vm.error().message};
    std::string seen;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(defaults::kKvmProbeTimeoutMs);
    for (;;) {
        int left = sys::ms_left(deadline);
        if (left <= 0) return {Accel::Tcg, "/dev/kvm is present but a guest did not boot under it within " +
                                               std::to_string(defaults::kKvmProbeTimeoutMs / 1000) + " s"};
        auto ready = sys::wait_fd(pipe->first.get(), POLLIN, left);
        if (!ready || !*ready) continue;
        char buf[4096];
        ssize_t n = ::read(pipe->first.get(), buf, sizeof buf);
        if (n <= 0) return {Accel::Tcg, "/dev/kvm is present but qemu could not run a guest with it"};
        seen.append(buf, size_t(n));
        if (seen.find(kProbeMarker) != std::string::npos) return {Accel::Kvm, "a guest booted under KVM"};
        if (seen.size() > 65536) seen.erase(0, seen.size() - 1024);
    }
}

std::string probe_cache_path() {
    if (!rootless()) return "/run/husk-accel.json";
    const char* x = ::getenv("XDG_RUNTIME_DIR");
    return x && *x ? std::string(x) + "/husk-accel.json" : "";
}

}  // namespace

AccelInfo detect_accel_info() {
    static std::optional<AccelInfo> memo;
    if (memo) return *memo;
    if (const char* env = ::getenv("HUSK_ACCEL"); env && *env) {
        std::string e = env;
        memo = e == "kvm" ? AccelInfo{Accel::Kvm, "HUSK_ACCEL=kvm"} : AccelInfo{Accel::Tcg, "HUSK_ACCEL=" + e};
        return *memo;
    }
    if (!kvm_opens()) return *(memo = AccelInfo{Accel::Tcg, "no usable /dev/kvm"});
    // /dev/kvm that opens is not KVM that works: nested hosts may expose it
    // and still fail our guest (seen on the dev machine: -cpu host aborts
    // on MSR 0x10a, and without it the guest spins in early boot). So one
    // real boot decides, once per host boot, under a lock so a hundred
    // concurrent creates wait for one probe.
    std::string boot_id = sys::read_file("/proc/sys/kernel/random/boot_id").value_or("");
    while (!boot_id.empty() && boot_id.back() == '\n') boot_id.pop_back();
    std::string cache = probe_cache_path();
    sys::Fd lock;
    if (!cache.empty()) {
        if (auto l = sys::open(cache + ".lock", O_RDWR | O_CREAT, 0600)) {
            lock = std::move(*l);
            (void)sys::flock(lock.get(), LOCK_EX);
        }
        auto j = nlohmann::json::parse(sys::read_file(cache, 4096).value_or(""), nullptr, false);
        if (j.is_object() && j.value("boot_id", "") == boot_id && j.contains("accel")) {
            memo = AccelInfo{j.value("accel", "") == "kvm" ? Accel::Kvm : Accel::Tcg, j.value("why", "")};
            return *memo;
        }
    }
    log::progress("probing KVM: one guest boot tells whether it runs here (once per host boot, up to 10 s)");
    memo = probe_kvm();
    if (!cache.empty())
        (void)sys::write_file_atomic(cache, nlohmann::json{{"boot_id", boot_id}, {"accel", accel_name(memo->accel)},
                                                           {"why", memo->why}}.dump(), 0644);
    return *memo;
}

Accel detect_accel() { return detect_accel_info().accel; }

// The CPU's clock from /proc/cpuinfo: a constant TSC's rate, as on the
// hosts we run; 0 if it says none.
static unsigned host_tsc_khz() {
    auto info = sys::read_file("/proc/cpuinfo", 1 << 20).value_or("");
    auto at = info.find("cpu MHz");
    if (at == std::string::npos || (at = info.find(':', at)) == std::string::npos) return 0;
    double mhz = std::strtod(info.c_str() + at + 1, nullptr);
    return mhz > 0 && mhz < 100000 ? unsigned(mhz * 1000) : 0;
}

bool kvm_shape() {
    const char* test = ::getenv("HUSK_TEST_KVM_SHAPE");
    return (test && std::string(test) == "1") || detect_accel() == Accel::Kvm;
}

bool vsock_available() { return ::access("/dev/vhost-vsock", R_OK | W_OK) == 0; }

const char* accel_name(Accel a) { return a == Accel::Kvm ? "kvm" : "tcg"; }

const std::vector<std::string>& hypervisor_names() {
    static const std::vector<std::string> names = {"qemu", "uml", "firecracker", "cloud-hypervisor"};
    return names;
}

std::unique_ptr<Hypervisor> make_hypervisor(const std::string& name) {
    if (name == "uml") return std::make_unique<uml::UmlHypervisor>();
    if (name == "firecracker") return std::make_unique<firecracker::FirecrackerHypervisor>();
    if (name == "cloud-hypervisor") return std::make_unique<cloud_hypervisor::CloudHypervisor>();
    if (name == "qemu" || name.empty()) {
        qemu::Options o;
        o.binary = defaults::kQemuBinary;
        bool kvm = kvm_shape();
        o.machine = kvm ? defaults::kQemuMachineKvm : defaults::kQemuMachineTcg;
        if (kvm && detect_accel() != Accel::Kvm) o.tcg_tsc_khz = host_tsc_khz();
        return std::make_unique<qemu::QemuHypervisor>(o);
    }
    return nullptr;
}

}  // namespace husk
