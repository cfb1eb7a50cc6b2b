// Pure translations from an OCI spec to what the sandbox needs: the
// shared-directory plan, the VmConfig, and the agent's create request.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/cgroups.h"
#include "husk/hypervisor.h"
#include "husk/network.h"
#include "husk/spec.h"
#include "protocol/agent.h"

namespace husk {

// One bind mount into <state>/shared/<name>; the guest sees it under the
// share's mount point at the same name.
struct ShareEntry {
    std::string name;
    std::string host_path;
    bool directory = true;
    bool readonly = false;
    bool recursive = true;
    // "rro" (mount_setattr's recursive read-only): submounts too. Plain
    // "ro" makes only the top mount read-only, as the kernel's bind does.
    bool recursive_readonly = false;
};

struct SharePlan {
    std::vector<ShareEntry> entries;  // entries[0] is the rootfs
    // For spec.mounts[i]: the share entry name, or "" if not a bind mount.
    std::vector<std::string> mount_share;
    // For spec.mounts[i]: the host's mounts under its source (relative
    // paths, parents first), which the shim finds once it has bound them.
    // The guest sees the share as one filesystem, so a read-only top
    // would make them read-only too: the agent binds each again, writable.
    std::vector<std::vector<std::string>> mount_submounts;
};

// A bind of the host's cgroup v1 hierarchies (a source under
// /sys/fs/cgroup/) means nothing in the guest, whose cgroups are v2 only:
// podman's systemd mode on a cgroup v1 host binds the host's named
// systemd hierarchy, writable, under a read-only /sys/fs/cgroup. Such a
// bind is dropped, and then the /sys/fs/cgroup mount is writable, as
// podman's systemd mode makes it on a cgroup v2 host. Returns what was
// dropped (for --debug).
std::vector<std::string> adapt_host_cgroup_binds(Spec& spec);

// `is_dir` tells whether a host path is a directory (injected for tests).
SharePlan plan_shares(const Spec& spec, const std::string& bundle, bool (*is_dir)(const std::string&));

struct HostFacts {
    Accel accel = Accel::Tcg;
    bool vsock = false;
    unsigned host_cpus = 1;
    std::string kernel;
    std::string initrd;
    bool debug = false;
    bool hybrid_vsock = false;  // the VMM's unix socket stands for vsock
    bool vsock_backend = false;  // ...served by husk-vsock (Capabilities::vsock_backend)
    // The share as a disk image (rootfs_on_disk), instead of shared.
    std::string share_disk;
    // Memory the VM may be given later (Capabilities::memory_hotplug).
    uint64_t hotplug_mib = 0;
    // vCPUs beyond those it needs, offline, for update (Capabilities::cpu_hotplug).
    bool cpu_hotplug = false;
    // How the share reaches the guest (choose_share_fs), unless on a disk.
    ShareFs share_fs = ShareFs::NineP;
    // Boot as a template (VmConfig::template_shape): a command line with
    // nothing of the container's in it (the agent is told at attach).
    bool template_shape = false;
};

// The agent's channel as husk names it (--debug, husk check, features):
// husk-vsock's device, a VMM's hybrid vsock, the kernel's vhost-vsock,
// UML's console line, else virtio-serial.
std::string channel_name(bool husk_vsock, bool hybrid_vsock, bool kernel_vsock, const std::string& driver);

struct SandboxPaths {
    std::string shared;
    std::string agent_sock;
    std::string control_sock;
    std::string vsock_sock;  // hybrid vsock: the VMM creates it
    std::string virtiofs_sock;  // virtio-fs: virtiofsd listens there
    std::string vsock_vhost_sock;  // husk-vsock's vhost-user socket
};

// The annotation that puts the rootfs on a disk: "disk" (a copy of the
// share in an ext4 image; what is written stays in the VM) or "shared"
// (the default where the driver can share a directory).
inline constexpr const char* kAnnotationRootfs = "org.husk.rootfs";
// Whether the share goes to the guest as a disk image: a driver that
// cannot share a directory, or the annotation's choice.
Result<bool> rootfs_on_disk(const Spec& spec, const std::string& driver, bool driver_shares);

// The annotation (and config file key `share`) that picks the shared
// filesystem: "virtiofs" or "9p"; the default is virtio-fs where it can be.
inline constexpr const char* kAnnotationShare = "org.husk.share";
struct ShareChoice {
    ShareFs fs = ShareFs::NineP;
    std::string why;  // for --debug and husk check
};
// What this host and driver can share a directory with.
struct ShareSupport {
    bool nine_p = true;      // the VMM serves 9p itself (QEMU; UML's hostfs stands in)
    bool virtio_fs = false;  // Capabilities::virtio_fs
    bool daemon = false;     // virtiofsd is there (find_virtiofsd)
    bool rootless = false;   // virtiofsd serves every uid of the guest: it must be root
    bool shares = true;      // Capabilities::shares: a directory at all (else a disk)
    bool virtio_fs_usable() const { return virtio_fs && daemon && !rootless; }
    // A share can be made here (else the rootfs goes on a disk).
    bool any() const { return shares && (nine_p || virtio_fs_usable()); }
};
// The share's filesystem: the annotation's choice, else the config file's
// (`config_share`, "" for none), else virtio-fs where it is usable, else
// 9p. A choice that cannot be kept is an error naming where it came from.
Result<ShareChoice> choose_share_fs(const Spec& spec, const std::string& config_share, const ShareSupport& can);
// `caps` with what the host has.
ShareSupport share_support(const Capabilities& caps, bool daemon, bool rootless);
// What a new container of `driver` gets on this host, for husk
// features/check: "virtiofs", "9p", "hostfs" (UML) or "disk", and why.
struct HostShare {
    std::string name;
    std::string why;
};
HostShare host_share(const ShareSupport& can, const std::string& driver, const std::string& config_share);
// The annotation's value alone, checked (for husk create, before anything starts).
Result<void> check_share_annotation(const Spec& spec);
// How long the VM may take to come up: org.husk.boot-timeout (seconds, a
// finite number in (0, 86400]), else defaults::kBootTimeoutMs.
Result<int> boot_timeout_ms(const Spec& spec);

// A pod's sizes, which containerd's CRI puts on its sandbox container.
inline constexpr const char* kPodMemoryAnnotation = "io.kubernetes.cri.sandbox-memory";  // bytes
inline constexpr const char* kPodCpuQuotaAnnotation = "io.kubernetes.cri.sandbox-cpu-quota";
inline constexpr const char* kPodCpuPeriodAnnotation = "io.kubernetes.cri.sandbox-cpu-period";

// A figure written in decimal digits alone (at most 18, so it fits), as
// annotations and cgroup files carry sizes; nullopt for anything else.
std::optional<uint64_t> decimal_figure(const std::string& v);

// The guest's memory: the container's limit (or a default), or the pod's
// when its sandbox says (kPodMemoryAnnotation), whichever is more; plus
// the guest's own overhead.
uint64_t vm_memory_mib(const Spec& spec);
// What vm_memory_mib and vm_vcpus went by, for --debug.
std::string vm_size_reason(const Spec& spec);
// vCPUs for the CPU quota, the cpuset and the pod's quota, whichever asks
// for more.
unsigned vm_vcpus(const Spec& spec, unsigned host_cpus);
// What each of them asks for, kept by the shim as `update` changes them.
struct VcpuWants {
    unsigned quota = 1, cpuset = 1, pod = 1;
    unsigned total(unsigned max) const;  // within 1..max
    // An update's guest cgroup writes (cpu.max, cpuset.cpus in host ids).
    void update(const std::vector<std::pair<std::string, std::string>>& writes);
};
VcpuWants vcpu_wants(const Spec& spec);

// CPU lists ("0-3,6"), as cpuset.cpus and taskset write them: sorted ids.
inline constexpr unsigned kMaxCpuId = 1024;  // CPU_SETSIZE
Result<std::vector<unsigned>> parse_cpu_list(const std::string& list);
// The host's CPU numbers mean nothing in the guest: a cpuset of k host
// CPUs becomes the guest's vCPUs 0..k-1 (of `vcpus`). The VMM itself is
// pinned to the host CPUs, so the container runs where the spec says.
std::string guest_cpuset(const std::string& host_list, unsigned vcpus);
// cpuset.cpus and cpuset.mems writes for the guest cgroup, translated so
// (or dropped, for a guest kernel without cpusets: `guest_cpusets`).
void translate_cpusets(std::vector<std::pair<std::string, std::string>>& writes, unsigned vcpus,
                       bool guest_cpusets = true);
// `nics`: the container netns's interfaces, nics[i] behind the tap named
// taps[i] (the shim's pick; both lists the same length). A caller that
// opened the taps itself sets Nic::fd, which a VMM that can uses instead
// of the name.
VmConfig make_vm_config(const Spec& spec, const HostFacts& host, const SandboxPaths& paths,
                        const std::vector<NetInterface>& nics = {}, const std::vector<std::string>& taps = {});

// CAP_* name -> number (libcap-ng's table), or -1.
int capability_number(const std::string& name);
// The capability names in a process that capability_number does not know.
std::vector<std::string> unknown_capabilities(const SpecProcess& proc);

// The process part of the agent's "create" and "exec" params.
proto::Process agent_process_params(const SpecProcess& proc);

// The agent's "create" params: everything it needs to build the container,
// with host paths replaced by share names, and the container's guest
// cgroup (guest_cgroup_files of linux.resources) with its device rules.
// The hooks that run in the guest (createContainer, startContainer).
std::map<std::string, std::vector<SpecHook>> guest_hooks(const SpecHooks& hooks);

// The container's id and its init's process index are the caller's to set.
proto::Create agent_create_params(const Spec& spec, const SharePlan& plan, const CgroupFiles& cgroup);

}  // namespace husk
