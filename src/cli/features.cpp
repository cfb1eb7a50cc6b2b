#include <iostream>

#include "cli/commands.h"
#include "husk/hypervisor.h"
#include "husk/version.h"

namespace husk::cli {

void setup_features(CLI::App& sub, Globals&, Handler& run) {
    sub.description("print what this runtime and host support (runtime-spec features JSON)");
    sub.callback([&run] {
        run = [] {
            auto hv = make_hypervisor("qemu");
            auto caps = hv->capabilities();
            nlohmann::json j = {
                {"ociVersionMin", "1.0.0"},
                {"ociVersionMax", HUSK_OCI_SPEC_VERSION},
                {"hooks", nlohmann::json::array()},
                {"mountOptions", {"ro", "rw", "bind", "rbind", "nosuid", "suid", "nodev", "dev", "noexec", "exec",
                                  "relatime", "norelatime", "strictatime", "noatime", "private", "rprivate",
                                  "shared", "rshared", "slave", "rslave"}},
                {"linux",
                 {{"namespaces", {"pid", "mount", "ipc", "uts", "cgroup", "network"}},
                  {"capabilities", nlohmann::json::array()},
                  {"cgroup", {{"v1", false}, {"v2", true}, {"systemd", false}, {"systemdUser", false}}},
                  {"seccomp", {{"enabled", false}}},
                  {"apparmor", {{"enabled", false}}},
                  {"selinux", {{"enabled", false}}}}},
                {"annotations",
                 {{"org.husk.hypervisor", "qemu"},
                  {"org.husk.accel", accel_name(detect_accel())},
                  {"org.husk.accel.reason", detect_accel_info().why},
                  {"org.husk.channel", caps.vsock ? "vsock" : "virtio-serial"},
                  {"org.husk.kvm", caps.kvm ? "true" : "false"}}},
            };
            std::cout << j.dump(2) << "\n";
            return 0;
        };
    });
}

}  // namespace husk::cli
