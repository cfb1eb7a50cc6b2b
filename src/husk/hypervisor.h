// The hypervisor interface: a hypervisor-neutral VmConfig in, a running VM
// out. Drivers live in hypervisors/<name>/; translation is a pure function.
#pragma once
#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "husk/defaults.h"
#include "husk/result.h"
#include "protocol/boot.h"

namespace husk {

enum class Accel { Kvm, Tcg };
enum class ChannelKind { VirtioSerial, Vsock, None };

// How a shared directory reaches the guest. virtio-fs is a FUSE server
// on the host (virtiofsd, in its own jail) that the VMM wires to the guest
// over vhost-user; 9p is served by the VMM itself (UML's hostfs is 9p's
// stand-in there).
enum class ShareFs { NineP, VirtioFs };

struct Share {
    std::string tag;        // guest mount tag
    std::string host_path;  // directory exported
    bool readonly = false;
    ShareFs fs = ShareFs::NineP;
    // virtio-fs: the daemon's vhost-user socket (in <workdir>/vmm, where
    // the VMM connects by name) and the guest's caching, as virtiofsd's
    // -o cache= says it: auto|always|none.
    std::string socket_path;
    std::string cache = defaults::kVirtiofsCache;
};

struct Disk {
    std::string path;
    bool readonly = true;
};

struct Nic {
    std::string tap;
    std::string mac;
    unsigned mtu = 1500;
    int fd = -1;         // the tap, opened by the caller (the VMM needs no /dev/net/tun)
    bool vhost = false;  // in-kernel virtio-net datapath (/dev/vhost-net, KVM only)
};

struct Channel {
    ChannelKind kind = ChannelKind::VirtioSerial;
    // virtio-serial: the VMM connects here. Hybrid vsock: the unix socket
    // the VMM creates. Both in <workdir>/vmm, which the jailed VMM sees as
    // its working directory (jail.h: jailed_config).
    std::string socket_path;
    uint32_t vsock_cid = 0;   // vsock: the guest's CID
    // A hybrid vsock that husk-vsock serves (vsock_backend.h): QEMU's
    // vhost-user-vsock device connects to it here ("" otherwise).
    std::string vhost_socket;
    // A template's clone under QEMU with husk-vsock: the VM starts on
    // virtio-serial (`kind`), as its template was saved, and husk-vsock
    // (vhost_socket, its hybrid socket here) serves a vsock device that is
    // plugged in after the restore (Vm::add_vsock); "" otherwise.
    std::string plugged_uds;
};

struct VmConfig {
    std::string kernel;
    std::string initrd;
    std::string cmdline;     // the kernel's own words
    proto::BootParams boot;  // the agent's (husk.*): the driver adds its channel and VMM
    unsigned vcpus = 1;
    uint64_t memory_mib = 192;
    Accel accel = Accel::Tcg;
    std::vector<Share> shares;
    std::vector<Disk> disks;
    std::vector<Nic> nics;
    // A balloon that only reports free pages: guest memory the container
    // frees goes back to the host (the VM's size stays what the spec says).
    bool free_page_reporting = true;
    // Memory the VM may be given while it runs (virtio-mem), up to this
    // much; 0: none. It starts with none of it plugged.
    uint64_t hotplug_mib = 0;
    // vCPUs the VM has, of which `vcpus` are online from boot (the guest's
    // maxcpus=): the agent onlines the rest when update asks for them.
    // 0 (or vcpus): all of them are online.
    unsigned max_vcpus = 0;
    unsigned all_vcpus() const { return std::max(vcpus, max_vcpus); }
    Channel channel;
    int console_fd = -1;      // the VMM writes the guest serial console here
    // The read end of a pipe whose write end the VMM's owner holds: the
    // VMM lives while some process does (its jail's reaper watches), not
    // only while its parent lives. -1: it dies with its parent.
    int lifeline_fd = -1;
    std::string control_socket;  // QMP / API socket; the VMM connects here
    // Boot as a VM template (Capabilities::templates): nothing of any one
    // container's in the machine (a virtio-fs share is added after the
    // boot, Vm::add_share; a 9p device is there but not mounted), a port to
    // add devices on, a VM generation id, and the agent told husk.template=1
    // (the cmdline says so). Then Vm::save_template, or a restore.
    bool template_shape = false;
    // Restore the saved template open here (read-only) instead of booting:
    // the same VmConfig as the template's, template_shape set.
    int incoming_fd = -1;
};

struct Capabilities {
    bool pause = false;
    bool vsock = false;
    bool shares = false;  // directories shared with the guest (else the rootfs goes on a disk)
    bool kvm = false;
    // The VMM connects to VmConfig::control_socket (QMP); the caller
    // listens there and hands the connection to Vm::attach_control.
    bool control_socket = false;
    // The channel is the VMM's hybrid vsock (Firecracker, Cloud
    // Hypervisor): a unix socket where "CONNECT <port>" reaches the guest.
    bool hybrid_vsock = false;
    // It can have a vsock device served by husk-vsock (Channel::
    // vhost_socket), a hybrid vsock of our own. Such a VM cannot be
    // saved (QEMU 7.2 migrates no vhost-user-vsock device), so templates
    // and checkpointable VMs keep virtio-serial.
    bool vsock_backend = false;
    // At most this many stdin bytes in flight to the agent per process
    // (0: the protocol's window), for channels that lose data or stall
    // when the guest's side fills up.
    uint32_t stdin_window = 0;
    // The VMM takes each tap as an open fd (Nic::fd). Else it opens the
    // tap by name, so the caller makes it persistent and deletes it.
    bool nic_fd = false;
    // At most this many bytes of anything (requests included) unread in the
    // guest's channel (0: no bound): the agent acknowledges what it reads.
    uint32_t channel_window = 0;
    // The most vCPUs its guests can have (0: as many as the host has).
    unsigned max_vcpus = 0;
    // Its guest kernel has the cpuset controller (else a cpuset is kept
    // on the host side alone).
    bool guest_cpusets = true;
    // Its guests can be given memory while they run (VmConfig::hotplug_mib,
    // Vm::set_hotplug_memory).
    bool memory_hotplug = false;
    // Its VMs can have more vCPUs than their guests bring up at boot
    // (VmConfig::max_vcpus), for update to online later.
    bool cpu_hotplug = false;
    // It can wire a virtiofsd to its guest (Share::fs = VirtioFs): its
    // guest RAM can be shared memory, and it has a vhost-user-fs device.
    bool virtio_fs = false;
    // It boots VMs as templates and restores them (VmConfig::template_shape,
    // incoming_fd; Vm::save_template, add_share).
    bool templates = false;
    // The most NICs a template's VM can be given (Vm::add_nic).
    unsigned template_nics = 0;
    // A template's VM holds a container's NICs from its boot (a VMM with
    // no hot-plug: Firecracker), with MACs of its own (templates::mac),
    // the taps by their names (the same in every container's netns);
    // else they are plugged in later (add_nic).
    bool template_holds_nics = false;
    // A template's VM holds a placeholder for each of VmConfig::disks (a
    // file of no size) and is given the container's by Vm::add_disk; else
    // a VM with disks boots on its own.
    bool template_disks = false;
    // It saves a running VM whose rootfs is on a disk and loads it into a
    // new VMM (Vm::checkpoint, VmConfig::incoming_fd; husk checkpoint and
    // restore): Hypervisor::vm_shape says what it may be loaded into.
    bool checkpoint = false;
    // Its shares can be 9p (QEMU's own server; UML's hostfs stands in).
    // Without it, a share is virtio-fs or none (the rootfs on a disk).
    bool nine_p = true;
    // It boots a Linux bzImage as VmConfig::kernel: an image's own kernel
    // (org.husk.kernel, system_image.h). Firecracker and Cloud Hypervisor
    // boot an ELF vmlinux only, UML its own kind of kernel.
    bool bzimage = false;
    // It boots an image's ELF vmlinux through its PVH entry, as it boots
    // husk's own kernel (QEMU, Firecracker, Cloud Hypervisor; not UML).
    bool elf_kernel = false;
};

// What a launch error appends before the last lines of the VMM's log
// (so that a caller that would add them knows they are there).
inline constexpr const char* kVmmLogTail = "; its log ends:\n";

// A launched VM. Destroying it kills the VMM.
class Vm {
public:
    virtual ~Vm() = default;
    virtual pid_t pid() const = 0;
    // The VMM connected to the control socket: finish the handshake.
    virtual Result<void> attach_control(int fd) = 0;
    virtual Result<void> stop() = 0;  // graceful, then forced
    virtual Result<void> pause() = 0;
    virtual Result<void> resume() = 0;
    // The guest is up (its agent spoke): let go of what only the boot
    // needed. Returns how many bytes of the VMM's memory were released
    // (advised: pages shared with another process stay).
    virtual Result<uint64_t> booted() { return uint64_t(0); }
    // Of VmConfig::hotplug_mib, have `mib` plugged into the guest (it
    // takes or gives back memory blocks as it can).
    virtual Result<void> set_hotplug_memory(uint64_t /*mib*/) {
        return fail("this VMM cannot change its guest's memory", ENOTSUP);
    }
    // A template-shaped guest: pause it, write its state to `fd` (a file
    // of the caller's), and let it run on, whether the save worked or not.
    virtual Result<void> save_template(int /*fd*/) { return fail("this VMM cannot save its guest", ENOTSUP); }
    // Pause the guest and write its state to `fd`, leaving it paused
    // (resume() runs it on) with its disks flushed (Capabilities::checkpoint).
    virtual Result<void> checkpoint(int /*fd*/) { return fail("this VMM cannot checkpoint its guest", ENOTSUP); }
    // Restoring a template (VmConfig::incoming_fd): wait for the load to
    // finish and run the guest.
    virtual Result<void> run_restored() { return fail("this VMM cannot restore a guest", ENOTSUP); }
    // A template-shaped guest: plug in VmConfig::shares[index] (virtio-fs,
    // which a template cannot hold).
    virtual Result<void> add_share(size_t /*index*/) { return fail("this VMM cannot add a share", ENOTSUP); }
    // ... and the vsock device husk-vsock serves (VmConfig::channel's
    // plugged_uds): the agent's channel becomes vsock.
    virtual Result<void> add_vsock() { return fail("this VMM cannot add a vsock device", ENOTSUP); }
    // ... and VmConfig::nics[index], its tap the fd the config had.
    virtual Result<void> add_nic(size_t /*index*/) { return fail("this VMM cannot add a NIC", ENOTSUP); }
    // ... and VmConfig::disks[index] in place of its placeholder
    // (Capabilities::template_disks).
    virtual Result<void> add_disk(size_t /*index*/) { return fail("this VMM cannot change a disk", ENOTSUP); }
};

class Hypervisor {
public:
    virtual ~Hypervisor() = default;
    virtual std::string name() const = 0;
    virtual Capabilities capabilities() const = 0;
    // The guest kernel this driver boots: rootfs-builder's vmlinux for a
    // machine emulator, the UML binary for UML.
    virtual std::string guest_kernel() const = 0;
    // Why this host cannot run the driver, or "" when it can.
    virtual std::string unavailable() const = 0;
    // Everything that shapes a template of `cfg` (template_shape set): two
    // configs with the same text restore each other's templates. "" when
    // this driver cannot make one of it.
    virtual std::string template_shape(const VmConfig& /*cfg*/) const { return ""; }
    // What a checkpoint of a VM of `cfg` is restored into: a VM whose
    // config has the same text (its devices, memory, vCPUs, the VMM and
    // guest image files) can load it. "" when this driver cannot.
    virtual std::string vm_shape(const VmConfig& /*cfg*/) const { return ""; }
    // Start the VMM. `keep_fds` are passed through to the child at their
    // numbers; everything else is closed. stdout/stderr go to `log_path`.
    virtual Result<std::unique_ptr<Vm>> launch(const VmConfig& cfg, const std::string& workdir,
                                               const std::string& log_path) = 0;
};

// KVM when /dev/kvm opens and answers KVM_GET_API_VERSION, else TCG.
// The accelerator this host gives our guests, and why. KVM only when a
// real guest boot under it worked (probed once per host boot, cached in
// /run/husk-accel.json or $XDG_RUNTIME_DIR); HUSK_ACCEL=kvm|tcg overrides.
struct AccelInfo {
    Accel accel = Accel::Tcg;
    std::string why;
};
AccelInfo detect_accel_info();
Accel detect_accel();
// The VM a KVM host gets (QEMU's microvm machine and its virtio-mmio
// devices) whatever the accelerator: under KVM, or when
// HUSK_TEST_KVM_SHAPE=1 asks for it under TCG, so that a host without KVM
// still runs everything of that path but the accelerator (scripts/test).
bool kvm_shape();
// What the agent prints on the console when booted with husk.probe=1.
inline constexpr const char* kProbeMarker = "HUSK-PROBE-OK";
bool vsock_available();
const char* accel_name(Accel a);

// Every driver husk has, default first.
const std::vector<std::string>& hypervisor_names();
// The driver by name; nullptr for a name not in hypervisor_names().
std::unique_ptr<Hypervisor> make_hypervisor(const std::string& name);
// The annotation that picks a container's driver, over the global choice.
inline constexpr const char* kAnnotationHypervisor = "org.husk.hypervisor";
}  // namespace husk
