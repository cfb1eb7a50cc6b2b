#include <cap-ng.h>
#include <linux/capability.h>

#include <cctype>
#include <iostream>

#include "cli/commands.h"
#include "husk/config.h"
#include "husk/vm_template.h"
#include "husk/hypervisor.h"
#include "husk/version.h"

namespace husk::cli {

void setup_features(CLI::App& sub, Globals& g, Handler& run) {
    sub.description("print what this runtime and host support (runtime-spec features JSON)");
    sub.callback([&g, &run] {
        run = [&g] {
            // The driver new containers get (--hypervisor, HUSK_HYPERVISOR,
            // the config file, else husk's choice), as `husk check` reports it.
            auto chosen = container_hypervisor(g);
            if (!chosen) return report("features", "", chosen.error());
            auto hv = make_hypervisor(chosen->name);
            nlohmann::json cap_names = nlohmann::json::array();
            for (int c = 0; c <= CAP_LAST_CAP; ++c)
                if (const char* n = capng_capability_to_name(capng_type_t(c))) {
                    std::string up = n;
                    for (auto& ch : up) ch = char(std::toupper(static_cast<unsigned char>(ch)));
                    cap_names.push_back("CAP_" + up);
                }
            auto caps = hv->capabilities();
            auto share = share_on_this_host(*hv);
            auto channel = channel_on_this_host(*hv);
            nlohmann::json j = {
                {"ociVersionMin", "1.0.0"},
                {"ociVersionMax", HUSK_OCI_SPEC_VERSION},
                // createContainer and startContainer run in the guest.
                {"hooks", {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}},
                // guest-agent/container.cpp's option table (runc's), rro and tmpcopyup.
                {"mountOptions", {"acl", "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
                                  "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime",
                                  "nostrictatime", "nosuid", "private", "rbind", "relatime", "remount", "ro",
                                  "rprivate", "rro", "rshared", "rslave", "runbindable", "rw", "shared", "slave",
                                  "strictatime", "suid", "sync", "tmpcopyup", "unbindable"}},
                {"linux",
                 {{"namespaces", {"pid", "mount", "ipc", "uts", "cgroup", "network"}},
                  {"capabilities", cap_names},
                  {"cgroup", {{"v1", false}, {"v2", true}, {"systemd", false}, {"systemdUser", false}}},
                  {"seccomp",
                   {{"enabled", true},
                    {"actions", {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                                 "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"}},
                    {"operators", {"SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                                   "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"}},
                    {"archs", {"SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"}},
                    {"supportedFlags", {"SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW"}}}},
                  {"apparmor", {{"enabled", false}}},
                  {"selinux", {{"enabled", false}}}}},
                {"annotations",
                 {{"org.husk.hypervisor", hv->name()},
                  {"org.husk.hypervisor.reason", chosen->why},
                  {"org.husk.accel", accel_name(detect_accel())},
                  {"org.husk.accel.reason", detect_accel_info().why},
                  {"org.husk.channel", channel.name},
                  {"org.husk.channel.reason", channel.why},
                  {"org.husk.kvm", caps.kvm ? "true" : "false"},
                  // How the rootfs and bind mounts reach the guest (`husk check` says why).
                  {"org.husk.share", share.name},
                  {"org.husk.share.reason", share.why}}},
            };
            // VM templates: used by new containers or not (why), and what is kept.
            auto config = load_config();
            auto t = templates::report(caps.templates, config ? config->templates : std::nullopt);
            j["annotations"]["org.husk.templates"] = t.on ? "on" : "off";
            if (!t.on) j["annotations"]["org.husk.templates.reason"] = t.why;
            j["annotations"]["org.husk.templates.dir"] = t.dir;
            j["annotations"]["org.husk.templates.count"] = std::to_string(t.count);
            j["annotations"]["org.husk.templates.bytes"] = std::to_string(t.bytes);
            // Every driver, and whether this host can run it: "available",
            // or "unavailable: <why>".
            for (const auto& n : hypervisor_names()) {
                auto why = make_hypervisor(n)->unavailable();
                j["annotations"]["org.husk.hypervisor." + n] = why.empty() ? "available" : "unavailable: " + why;
            }
            std::cout << j.dump(2) << "\n";
            return 0;
        };
    });
}

}  // namespace husk::cli
