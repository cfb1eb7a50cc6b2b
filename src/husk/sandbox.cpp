#include "husk/sandbox.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include <cap-ng.h>

#include "husk/defaults.h"
#include "husk/numbers.h"
#include "husk/system_image.h"

namespace husk {

using nlohmann::json;

static bool has_option(const std::vector<std::string>& opts, const std::string& o) {
    return std::find(opts.begin(), opts.end(), o) != opts.end();
}

std::vector<std::string> adapt_host_cgroup_binds(Spec& spec) {
    std::vector<std::string> dropped;
    auto under = [](const std::string& p, const std::string& dir) { return p == dir || p.rfind(dir + "/", 0) == 0; };
    for (auto it = spec.mounts.begin(); it != spec.mounts.end();) {
        if (it->is_bind() && under(it->source, "/sys/fs/cgroup") && under(it->destination, "/sys/fs/cgroup") &&
            it->destination != "/sys/fs/cgroup") {
            dropped.push_back(it->destination);
            it = spec.mounts.erase(it);
        } else {
            ++it;
        }
    }
    if (!dropped.empty())
        for (auto& m : spec.mounts)
            if (m.destination == "/sys/fs/cgroup" && m.type == "cgroup") {
                std::erase(m.options, std::string("ro"));
                m.options.push_back("rw");
            }
    return dropped;
}

SharePlan plan_shares(const Spec& spec, const std::string& bundle, bool (*is_dir)(const std::string&)) {
    SharePlan plan;
    // The rootfs stays writable on the host side: mount points are created in
    // it before the guest makes it read-only, as runc does.
    plan.entries.push_back({"rootfs", rootfs_path(bundle, spec), true, false, true});
    for (size_t i = 0; i < spec.mounts.size(); ++i) {
        const auto& m = spec.mounts[i];
        if (!m.is_bind()) {
            plan.mount_share.emplace_back();
            continue;
        }
        std::string src = m.source;
        if (src.empty() || src[0] != '/') src = bundle + "/" + src;  // runc: relative to the bundle
        ShareEntry e;
        e.name = "m" + std::to_string(i);
        e.host_path = src;
        e.directory = is_dir(src);
        e.recursive_readonly = has_option(m.options, "rro");
        e.readonly = has_option(m.options, "ro") || e.recursive_readonly;
        e.recursive = m.type == "rbind" || has_option(m.options, "rbind");
        plan.entries.push_back(e);
        plan.mount_share.push_back(e.name);
    }
    return plan;
}

std::optional<uint64_t> decimal_figure(const std::string& v) {
    return v.size() <= 18 ? parse_number<uint64_t>(v) : std::nullopt;  // (digits alone: unsigned takes no sign)
}

// A CRI sandbox's pod-level figure (containerd sets these on the pause
// container from the pod's containers, Kubernetes 1.23+): 0 if absent or
// not a number.
static uint64_t pod_figure(const Spec& spec, const char* key) {
    auto it = spec.annotations.find(key);
    return it == spec.annotations.end() ? 0 : decimal_figure(it->second).value_or(0);
}

uint64_t vm_memory_mib(const Spec& spec) {
    uint64_t container = defaults::kContainerMemoryMiB;
    if (spec.memory_limit) container = (uint64_t(*spec.memory_limit) + (1 << 20) - 1) >> 20;
    // A pod's VM holds the pod: the sum of its containers' memory (rkt's rule).
    if (uint64_t pod = pod_figure(spec, kPodMemoryAnnotation)) container = std::max(container, (pod + (1 << 20) - 1) >> 20);
    return container + defaults::kMemoryOverheadMiB;
}

std::string vm_size_reason(const Spec& spec) {
    std::string why;
    if (uint64_t m = pod_figure(spec, kPodMemoryAnnotation)) why += "pod memory " + std::to_string(m >> 20) + " MiB";
    if (uint64_t q = pod_figure(spec, kPodCpuQuotaAnnotation)) {
        uint64_t period = pod_figure(spec, kPodCpuPeriodAnnotation);
        why += std::string(why.empty() ? "" : ", ") + "pod cpu quota " + std::to_string(q) + "/" +
               std::to_string(period ? period : 100000);
    }
    if (why.empty()) why = spec.memory_limit ? "the container's memory limit" : "the default size";
    return why;
}

Result<std::vector<unsigned>> parse_cpu_list(const std::string& list) {
    std::vector<unsigned> out;
    auto bad = [&] { return fail("\"" + list + "\": expected a CPU list such as 0-3,6", EINVAL); };
    auto number = [](const std::string& t, unsigned& v) {
        auto n = t.size() <= 4 ? parse_number<unsigned>(t) : std::nullopt;
        v = n.value_or(0);
        return n && v < kMaxCpuId;
    };
    size_t pos = 0;
    while (pos <= list.size() && !list.empty()) {
        size_t end = list.find(',', pos);
        std::string part = list.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
        unsigned a = 0, b = 0;
        auto dash = part.find('-');
        if (!number(part.substr(0, dash), a)) return bad();
        b = a;
        if (dash != std::string::npos && (!number(part.substr(dash + 1), b) || b < a)) return bad();
        for (unsigned c = a; c <= b; ++c)
            if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
        if (end == std::string::npos) break;
        pos = end + 1;
    }
    std::sort(out.begin(), out.end());
    return out;
}

// CPUs of quota per period, rounded up (a period of 0 is the default's).
static unsigned quota_cpus(uint64_t quota, uint64_t period) {
    if (period == 0) period = 100000;
    return unsigned(std::min<uint64_t>((quota + period - 1) / period, defaults::kMaxVcpus));
}

VcpuWants vcpu_wants(const Spec& spec) {
    VcpuWants w;
    if (spec.cpu_quota && *spec.cpu_quota > 0) w.quota = quota_cpus(uint64_t(*spec.cpu_quota), spec.cpu_period.value_or(100000));
    if (auto cpus = parse_cpu_list(spec.cpuset_cpus); cpus && !cpus->empty()) w.cpuset = unsigned(cpus->size());
    if (uint64_t q = pod_figure(spec, kPodCpuQuotaAnnotation)) w.pod = quota_cpus(q, pod_figure(spec, kPodCpuPeriodAnnotation));
    return w;
}

unsigned VcpuWants::total(unsigned max) const {
    return std::max(1u, std::min({std::max({quota, cpuset, pod}), std::max(1u, max), defaults::kMaxVcpus}));
}

void VcpuWants::update(const std::vector<std::pair<std::string, std::string>>& writes) {
    for (const auto& [file, value] : writes) {
        if (file == "cpu.max") {
            // "QUOTA PERIOD" or "max PERIOD": no quota asks for nothing.
            auto sp = value.find(' ');
            auto q = decimal_figure(value.substr(0, sp));
            auto p = sp == std::string::npos ? std::optional<uint64_t>(100000) : decimal_figure(value.substr(sp + 1));
            quota = q && p ? std::max(1u, quota_cpus(*q, *p)) : 1;
        } else if (file == "cpuset.cpus") {
            auto cpus = parse_cpu_list(value);
            cpuset = cpus && !cpus->empty() ? unsigned(cpus->size()) : 1;
        }
    }
}

unsigned vm_vcpus(const Spec& spec, unsigned host_cpus) {
    // Enough vCPUs for the quota and for every CPU of the cpuset: runc
    // lets a container with half a CPU of quota run on two CPUs.
    return vcpu_wants(spec).total(host_cpus);
}

std::string guest_cpuset(const std::string& host_list, unsigned vcpus) {
    auto cpus = parse_cpu_list(host_list);
    unsigned k = std::max(1u, std::min(vcpus, cpus && !cpus->empty() ? unsigned(cpus->size()) : vcpus));
    return k == 1 ? "0" : "0-" + std::to_string(k - 1);
}

void translate_cpusets(std::vector<std::pair<std::string, std::string>>& writes, unsigned vcpus, bool guest_cpusets) {
    if (!guest_cpusets)
        std::erase_if(writes, [](const auto& w) { return w.first == "cpuset.cpus" || w.first == "cpuset.mems"; });
    for (auto& [file, value] : writes) {
        if (file == "cpuset.cpus") value = guest_cpuset(value, vcpus);
        else if (file == "cpuset.mems") value = "0";  // the guest has one memory node
    }
}

std::string channel_name(bool husk_vsock, bool hybrid_vsock, bool kernel_vsock, const std::string& driver) {
    return husk_vsock     ? "vsock (husk-vsock)"  // a hybrid vsock too: checked first
           : hybrid_vsock ? "hybrid vsock"
           : kernel_vsock ? "vsock"
           : driver == "uml" ? "console line"
                             : "virtio-serial";
}

VmConfig make_vm_config(const Spec& spec, const HostFacts& host, const SandboxPaths& paths,
                        const std::vector<NetInterface>& nics, const std::vector<std::string>& taps) {
    VmConfig c;
    c.kernel = host.kernel;
    c.initrd = host.initrd;
    c.accel = host.accel;
    c.vcpus = vm_vcpus(spec, host.host_cpus);
    if (host.cpu_hotplug) c.max_vcpus = std::max(c.vcpus, std::min(host.host_cpus, defaults::kMaxStandbyVcpus));
    c.memory_mib = vm_memory_mib(spec);
    if (host.share_disk.empty()) {
        Share sh;
        sh.tag = defaults::kShareTag;
        sh.host_path = paths.shared;
        if (host.share_fs == ShareFs::VirtioFs) {
            sh.fs = ShareFs::VirtioFs;
            sh.socket_path = paths.virtiofs_sock;
        }
        c.shares.push_back(sh);
    } else {
        c.disks.push_back({host.share_disk, false});
    }
    c.channel.kind = host.vsock || host.hybrid_vsock ? ChannelKind::Vsock : ChannelKind::VirtioSerial;
    c.channel.socket_path = host.hybrid_vsock ? paths.vsock_sock : paths.agent_sock;
    if (host.hybrid_vsock) c.channel.vsock_cid = 3;  // the VMM's own: any CID will do
    if (host.vsock_backend) c.channel.vhost_socket = paths.vsock_vhost_sock;
    c.control_socket = paths.control_sock;
    // The console is quiet unless debugging: under TCG every emulated
    // serial byte costs boot time.
    for (size_t i = 0; i < nics.size() && i < taps.size(); ++i) c.nics.push_back({taps[i], nics[i].mac, nics[i].mtu});
    if (host.template_shape) {
        // The same for every container of its shape: the agent loads both
        // shares' modules, and attach says which to mount, whether to
        // debug, and how many vCPUs to bring up beyond the first.
        c.template_shape = true;
        c.cmdline = std::string(defaults::kKernelCmdline) + " quiet";
        c.boot.template_boot = true;
        if (c.all_vcpus() > 1) c.cmdline += " maxcpus=1";
        // A disk's module too: the template holds a placeholder for it.
        if (!host.share_disk.empty()) c.boot.share = "disk";
    } else {
        c.cmdline = std::string(defaults::kKernelCmdline) + (host.debug ? "" : " quiet");
        c.boot.debug = host.debug;
        c.boot.net = !nics.empty();  // the agent loads virtio_net
        if (!host.share_disk.empty()) c.boot.share = "disk";
        else if (host.share_fs == ShareFs::VirtioFs) c.boot.share = "virtiofs";
        if (c.max_vcpus > c.vcpus) c.cmdline += " maxcpus=" + std::to_string(c.vcpus);  // the rest wait offline
    }
    if (host.hotplug_mib) {
        // The agent loads virtio_mem; memory it is given is onlined at once
        // (movable: what is taken back later can be emptied). The device's
        // range lies above 4 GiB, which would make the kernel set aside
        // 64 MiB of bounce buffers (swiotlb) for 32-bit DMA: virtio needs
        // none, and the guest had 145 MiB of its 192 then 79.
        c.hotplug_mib = host.hotplug_mib;
        c.boot.mem = true;
        c.cmdline += " memhp_default_state=online_movable swiotlb=noforce";
    }
    return c;
}

static Result<std::string> share_annotation(const Spec& spec) {
    auto it = spec.annotations.find(kAnnotationShare);
    if (it == spec.annotations.end()) return std::string();
    if (it->second != "virtiofs" && it->second != "9p")
        return fail(std::string("annotation ") + kAnnotationShare + ": expected \"virtiofs\" or \"9p\", got \"" + it->second + "\"",
                    EINVAL);
    return it->second;
}

Result<int> boot_timeout_ms(const Spec& spec) {
    auto it = spec.annotations.find(defaults::kAnnotationBootTimeout);
    if (it == spec.annotations.end()) return defaults::kBootTimeoutMs;
    const std::string& v = it->second;
    char* end = nullptr;
    errno = 0;
    double secs = v.empty() ? 0 : std::strtod(v.c_str(), &end);
    if (v.empty() || errno || end != v.c_str() + v.size() || !std::isfinite(secs) || secs <= 0 || secs > 86400)
        return fail("annotation " + it->first + ": expected seconds in (0, 86400], got \"" + v + "\"", EINVAL);
    return int(std::max(1.0, secs * 1000));
}

Result<void> check_share_annotation(const Spec& spec) { return share_annotation(spec).map([](auto&&) {}); }

Result<ShareChoice> choose_share_fs(const Spec& spec, const std::string& config_share, const ShareSupport& can) {
    std::string want = TRY(share_annotation(spec)), origin = std::string("annotation ") + kAnnotationShare;
    if (want.empty() && !config_share.empty()) {
        if (config_share != "virtiofs" && config_share != "9p")
            return fail("config share: expected \"virtiofs\" or \"9p\", got \"" + config_share + "\"", EINVAL);
        want = config_share, origin = "the config file's share";
    }
    std::string cannot = !can.virtio_fs ? "the driver has no virtio-fs"
                         : !can.daemon  ? "no virtiofsd (apt install qemu-system-common, or set HUSK_VIRTIOFSD)"
                         : can.rootless ? "rootless: virtiofsd must be root to serve the guest's users"
                                        : "";
    if (want == "9p") {
        if (!can.nine_p) return fail(origin + "=9p: the driver has no 9p (virtio-fs, or a disk)", ENOTSUP);
        return ShareChoice{ShareFs::NineP, origin + " says 9p"};
    }
    if (want == "virtiofs") {
        if (!cannot.empty()) return fail(origin + "=virtiofs: " + cannot, ENOTSUP);
        return ShareChoice{ShareFs::VirtioFs, origin + " says virtiofs"};
    }
    if (!cannot.empty()) {
        if (!can.nine_p) return fail("no shared filesystem: " + cannot + ", and the driver has no 9p", ENOTSUP);
        return ShareChoice{ShareFs::NineP, "9p: " + cannot};
    }
    return ShareChoice{ShareFs::VirtioFs, "the default"};
}

ShareSupport share_support(const Capabilities& caps, bool daemon, bool rootless) {
    return {caps.nine_p, caps.virtio_fs, daemon, rootless, caps.shares};
}

HostShare host_share(const ShareSupport& can, const std::string& driver, const std::string& config_share) {
    if (!can.any()) return {"disk", "disk: " + driver + " cannot share a directory here (an ext4 copy of the rootfs)"};
    if (driver == "uml") return {"hostfs", "hostfs: UML's own"};
    auto c = choose_share_fs(Spec{}, config_share, can);
    if (!c) return {"9p", c.error().message};
    return {c->fs == ShareFs::VirtioFs ? "virtiofs" : "9p", c->why};
}

Result<bool> rootfs_on_disk(const Spec& spec, const std::string& driver, bool driver_shares) {
    auto it = spec.annotations.find(kAnnotationRootfs);
    std::string want = it == spec.annotations.end() ? "" : it->second;
    if (want.empty()) return !driver_shares;
    if (want == "disk") return true;
    if (want != "shared")
        return fail(std::string("annotation ") + kAnnotationRootfs + ": expected \"shared\" or \"disk\", got \"" + want + "\"",
                    EINVAL);
    if (!driver_shares)
        return fail(std::string("annotation ") + kAnnotationRootfs + "=shared: " + driver +
                        " cannot share a directory with its guest (its rootfs goes on a disk)",
                    EINVAL);
    return false;
}

int capability_number(const std::string& name) {
    if (name.rfind("CAP_", 0) != 0) return -1;
    return capng_name_to_capability(name.substr(4).c_str());
}

std::vector<std::string> unknown_capabilities(const SpecProcess& proc) {
    std::vector<std::string> out;
    if (!proc.capabilities) return out;
    for (const auto& [set, names] : *proc.capabilities)
        for (const auto& n : names)
            if (capability_number(n) < 0 && std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
    return out;
}

proto::Process agent_process_params(const SpecProcess& proc) {
    proto::Process p;
    p.args = proc.args;
    p.env = proc.env;
    p.cwd = proc.cwd;
    p.uid = proc.user.uid;
    p.gid = proc.user.gid;
    p.additional_gids = proc.user.additional_gids;
    p.no_new_privileges = proc.no_new_privileges;
    p.terminal = proc.terminal;
    p.umask = proc.user.umask;
    if (proc.terminal && proc.console_height && proc.console_width)
        p.console_size = proto::ConsoleSize{uint16_t(proc.console_height), uint16_t(proc.console_width)};
    if (proc.capabilities) {
        // Names the host's libcap-ng does not know are skipped (the runtime
        // spec asks for a warning, not a failure; the shim logs them).
        p.capabilities.emplace();
        for (const auto& [set, names] : *proc.capabilities) {
            auto& nums = (*p.capabilities)[set];
            for (const auto& n : names)
                if (int c = capability_number(n); c >= 0) nums.push_back(c);
        }
    }
    for (const auto& l : proc.rlimits) p.rlimits.push_back({rlimit_resource(l.type), l.soft, l.hard});
    p.oom_score_adj = proc.oom_score_adj;
    return p;
}

std::map<std::string, std::vector<SpecHook>> guest_hooks(const SpecHooks& hooks) {
    std::map<std::string, std::vector<SpecHook>> out;
    for (const char* stage : {"createContainer", "startContainer"})
        if (auto it = hooks.find(stage); it != hooks.end() && !it->second.empty()) out[stage] = it->second;
    return out;
}

// linux.seccomp, which the spec's parser checked (spec.cpp check_seccomp).
static proto::Seccomp seccomp_of(const json& sec) {
    proto::Seccomp s;
    s.default_action = sec.at("defaultAction").get<std::string>();
    if (sec.contains("defaultErrnoRet")) s.default_errno_ret = sec["defaultErrnoRet"].get<uint32_t>();
    s.architectures = sec.value("architectures", std::vector<std::string>{});
    s.flags = sec.value("flags", std::vector<std::string>{});
    for (const auto& r : sec.value("syscalls", json::array())) {
        proto::SeccompRule rule;
        rule.names = r.at("names").get<std::vector<std::string>>();
        rule.action = r.at("action").get<std::string>();
        if (r.contains("errnoRet")) rule.errno_ret = r["errnoRet"].get<uint32_t>();
        for (const auto& a : r.value("args", json::array()))
            rule.args.push_back({a.at("index").get<unsigned>(), a.at("value").get<uint64_t>(), a.value("valueTwo", uint64_t(0)),
                                 a.at("op").get<std::string>()});
        s.syscalls.push_back(std::move(rule));
    }
    return s;
}

proto::Create agent_create_params(const Spec& spec, const SharePlan& plan, const CgroupFiles& cgroup) {
    proto::Create p;
    p.process = agent_process_params(*spec.process);
    if (system_image::console_stdio(spec).value_or(false) && !p.process.terminal) {
        // The guest's terminal, relayed as the pipes the host has: one
        // stream out (stdout; stderr ends at once), stdin into it.
        p.process.terminal = true;
        p.process.console_size = proto::ConsoleSize{24, 80};
    }
    p.root_share = plan.entries[0].name;
    p.root_readonly = spec.root_readonly;
    p.hostname = spec.hostname;
    for (size_t i = 0; i < spec.mounts.size(); ++i) {
        const auto& m = spec.mounts[i];
        proto::Mount pm{m.destination, m.type, m.options, "", std::nullopt, {}};
        if (!plan.mount_share[i].empty()) {
            pm.type = "bind";
            pm.share = plan.mount_share[i];
            if (i < plan.mount_submounts.size()) pm.submounts = plan.mount_submounts[i];
        } else {
            pm.source = m.source;
        }
        p.mounts.push_back(std::move(pm));
    }
    for (const auto& n : spec.namespaces)
        if (n.type != "network") p.namespaces.push_back(n.type);  // the VM is the network
    if (spec.has_namespace("user")) {
        auto lines = [](const std::vector<SpecIdMap>& maps) {
            std::string out;
            for (const auto& m : maps)
                out += std::to_string(m.container_id) + " " + std::to_string(m.host_id) + " " + std::to_string(m.size) + "\n";
            return out;
        };
        p.userns = proto::UserNs{lines(spec.uid_mappings), lines(spec.gid_mappings)};
    }
    p.masked_paths = spec.masked_paths;
    p.readonly_paths = spec.readonly_paths;
    p.sysctl = spec.sysctl;
    if (!spec.seccomp.is_null()) p.seccomp = seccomp_of(spec.seccomp);
    p.cgroup = proto::Cgroup{cgroup.writes, guest_device_rules(spec.resources.is_object() ? spec.resources : json::object())};
    for (const auto& d : spec.devices) p.devices.push_back({d.path, d.type, d.major, d.minor, d.uid, d.gid, d.file_mode});
    return p;
}

}  // namespace husk
