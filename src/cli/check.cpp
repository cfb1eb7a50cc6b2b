// `husk check` (as `kata-runtime check`): what this host can run, and the
// exact fix for each missing piece. A table, or JSON with --format json.
// Exits 0 when the driver new containers get can run here.
#include <unistd.h>

#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "husk/config.h"
#include "husk/vm_template.h"
#include "husk/hypervisor.h"
#include "husk/paths.h"
#include "hypervisors/virtiofsd.h"
#include "sys/sys.h"

namespace husk::cli {

namespace {

struct Check {
    std::string name;
    bool ok;
    std::string detail;
    std::string fix;  // "" when there is nothing to do
    bool required = false;  // the default driver cannot run without it
};

std::string driver_fix(const std::string& name) {
    if (name == "qemu") return "apt-get install qemu-system-x86";
    if (name == "uml") return "apt-get install user-mode-linux";
    if (name == "firecracker") return "install firecracker on PATH (or set HUSK_FIRECRACKER) and give husk a usable /dev/kvm";
    return "install cloud-hypervisor on PATH (or set HUSK_CLOUD_HYPERVISOR) and give husk a usable /dev/kvm";
}

std::vector<Check> run_checks(const std::string& chosen) {
    std::vector<Check> out;
    for (const auto& n : hypervisor_names()) {
        auto why = make_hypervisor(n)->unavailable();
        out.push_back({"driver " + n, why.empty(), why.empty() ? "available" + std::string(n == chosen ? " (the default)" : "") : why,
                       why.empty() ? "" : driver_fix(n), n == chosen});
    }
    auto accel = detect_accel_info();
    out.push_back({"acceleration", true, std::string(accel_name(accel.accel)) + ": " + accel.why,
                   accel.accel == Accel::Kvm ? "" : "for KVM: a host with VT-x/AMD-V (or nested virtualization) and kvm_intel or kvm_amd loaded"});
    auto hv = make_hypervisor(chosen);
    for (const auto& [what, path] : {std::pair<std::string, std::string>{"guest kernel", hv ? hv->guest_kernel() : ""},
                                     {"guest initramfs", find_guest_initrd()}}) {
        bool ok = !path.empty() && sys::exists(path);
        out.push_back({what, ok, path.empty() ? "none" : path,
                       ok ? "" : "build it (ninja -C build, rootfs-builder) or install husk; HUSK_KERNEL/HUSK_INITRD point elsewhere", true});
    }
    std::string shim = find_shim_binary();
    bool shim_ok = ::access(shim.c_str(), X_OK) == 0;
    out.push_back({"shim", shim_ok, shim, shim_ok ? "" : "build or install husk-shim, or set HUSK_SHIM", true});
    if (hv) {
        auto ch = channel_on_this_host(*hv);
        bool ok = ch.vsock || hv->name() == "uml";  // UML has nothing to fix: its console line is its channel
        out.push_back({"vsock", ok, ch.name + ": " + ch.why, ok ? "" : "modprobe vhost_vsock, or build husk-vsock (HUSK_VSOCK)"});
    }
    std::string vfsd = find_virtiofsd();
    out.push_back({"virtiofsd", !vfsd.empty(), (vfsd.empty() ? std::string("not found") : vfsd),
                   vfsd.empty() ? "apt-get install qemu-system-common (or set HUSK_VIRTIOFSD)" : ""});
    if (hv) {
        auto share = share_on_this_host(*hv);
        out.push_back({"shared filesystem", true, share.name + " (" + share.why + ")", ""});
        auto config = load_config();
        auto t = templates::report(hv->capabilities().templates, config ? config->templates : std::nullopt);
        out.push_back({"VM templates", true,
                       (t.on ? "on: " : "off (" + t.why + "): ") + std::to_string(t.count) + " saved, " +
                           std::to_string(t.bytes >> 20) + " MiB in " + t.dir,
                       ""});
        // husk checkpoint/restore; podman's own check wants a CRIU binary.
        bool cp = hv->capabilities().checkpoint;
        bool criu = sys::find_program("criu").has_value();
        out.push_back({"checkpoint", cp,
                       cp ? "husk checkpoint/restore save the whole VM (the rootfs on a disk: org.husk.rootfs=disk); " +
                                std::string(criu ? "criu is installed, which podman's checkpoint wants"
                                                 : "podman's checkpoint also wants a criu binary, not found")
                          : "the " + chosen + " driver cannot save a VM",
                       !cp ? "use the qemu, firecracker or cloud-hypervisor driver" : criu ? "" : "apt-get install criu (for podman)"});
    }
    // Same-page merging: the identical pages of 9p VMs (templates' clones
    // most of all) are stored once; virtio-fs VMs' shared memory is not.
    std::string ksm = sys::read_file("/sys/kernel/mm/ksm/run").value_or("");
    bool ksm_on = ksm.rfind('1', 0) == 0;
    out.push_back({"memory merging (KSM)", ksm_on,
                   ksm.empty() ? "the kernel has no KSM"
                   : ksm_on    ? "on: 9p VMs' identical pages are kept once (not virtio-fs's shared memory)"
                               : "off: every VM keeps its own copy of pages it shares with others (for density: 9p and KSM)",
                   ksm_on || ksm.empty() ? "" : "echo 1 > /sys/kernel/mm/ksm/run (host-wide; costs ksmd CPU)"});
    bool vnet = ::access("/dev/vhost-net", R_OK | W_OK) == 0;
    out.push_back({"vhost-net", vnet, vnet ? "in-kernel virtio-net datapath under KVM" : "no /dev/vhost-net: QEMU moves the packets",
                   vnet ? "" : "modprobe vhost_net"});
    bool tun = sys::exists("/dev/net/tun");
    out.push_back({"tun", tun, tun ? "/dev/net/tun: the container netns's links become the VM's NICs" : "no /dev/net/tun: no networking",
                   tun ? "" : "modprobe tun"});
    std::string clone = sys::read_file("/proc/sys/kernel/unprivileged_userns_clone").value_or("1");
    std::string max = sys::read_file("/proc/sys/user/max_user_namespaces").value_or("1");
    bool userns = clone.rfind('0', 0) != 0 && max.rfind('0', 0) != 0;
    out.push_back({"user namespaces", userns, userns ? "unprivileged users may make them: rootless husk works" : "unprivileged users may not: no rootless husk",
                   userns ? "" : "sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000"});
    bool v2 = sys::exists("/sys/fs/cgroup/cgroup.controllers");
    bool hybrid = !v2 && sys::exists("/sys/fs/cgroup/unified");
    out.push_back({"host cgroups", v2 || hybrid || sys::exists("/sys/fs/cgroup/memory"),
                   v2 ? "v2 (unified)" : hybrid ? "v1 (hybrid, with a v2 tree)" : "v1",
                   ""});
    return out;
}

}  // namespace

void setup_check(CLI::App& sub, Globals& g, Handler& run) {
    auto format = std::make_shared<std::string>("table");
    sub.description("check what this host can run: drivers, acceleration, the guest image, vsock, virtiofsd, rootless");
    sub.add_option("-f,--format", *format, "table or json")->check(CLI::IsMember({"table", "json"}));
    sub.callback([&g, &run, format] {
        run = [&g, format] {
            auto driver = container_hypervisor(g);
            if (!driver) return report("check", "", driver.error());
            std::string chosen = driver->name;
            auto checks = run_checks(chosen);
            checks.insert(checks.begin(), Check{"default driver", true, chosen + ": " + driver->why, ""});
            bool ok = true;
            for (const auto& c : checks)
                if (c.required && !c.ok) ok = false;
            if (*format == "json") {
                nlohmann::ordered_json j = {{"ok", ok}, {"hypervisor", chosen}, {"hypervisor_reason", driver->why},
                                            {"checks", nlohmann::ordered_json::array()}};
                for (const auto& c : checks)
                    j["checks"].push_back({{"name", c.name}, {"ok", c.ok}, {"required", c.required}, {"detail", c.detail}, {"fix", c.fix}});
                std::cout << j.dump(2) << "\n";
            } else {
                for (const auto& c : checks) {
                    std::cout << std::left << std::setw(26) << c.name << std::setw(6) << (c.ok ? "ok" : c.required ? "FAIL" : "no")
                              << c.detail << "\n";
                    if (!c.fix.empty() && !c.ok) std::cout << std::setw(32) << "" << "fix: " << c.fix << "\n";
                }
                std::cout << (ok ? "husk can run containers here with " + chosen
                                 : "husk cannot run containers here with " + chosen + ": see FAIL above")
                          << "\n";
            }
            return ok ? 0 : 1;
        };
    });
}

}  // namespace husk::cli
