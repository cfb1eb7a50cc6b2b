// Every tunable default, in one place.
#pragma once
#include <cstdint>
#include <string_view>

namespace husk::defaults {

inline constexpr const char* kStateRoot = "/run/husk";
// Guest memory when the spec sets no memory limit, and what the guest
// kernel + agent need on top of the container's limit.
inline constexpr uint64_t kContainerMemoryMiB = 128;
inline constexpr uint64_t kMemoryOverheadMiB = 64;
// The host's memory bound for a VM whose spec limits memory: its RAM and
// this much for the VMM itself (QEMU under TCG: a 32 MiB code cache, ~20
// MiB of binaries, heap, the file cache its 9p server reads through; see
// docs/design.md). Over it the host reclaims the VMM's cache first.
inline constexpr uint64_t kVmmMemoryMiB = 256;
// At most this much memory is plugged into a running VM (virtio-mem): a
// pod's members as they arrive, `update` of a memory limit past the VM's.
inline constexpr uint64_t kHotplugMaxMiB = 2048;
inline constexpr uint64_t kHotplugBlockMiB = 2;  // virtio-mem's block size on x86 (a THP)
inline constexpr unsigned kMaxVcpus = 64;
// A VM has up to this many vCPUs (no more than the host's CPUs) whatever
// its limits, those it does not need offline, for update to online: each
// costs the VMM a thread and the guest its per-CPU memory.
inline constexpr unsigned kMaxStandbyVcpus = 8;
// How long a VM may take from launch to the agent's HELLO. TCG boots take
// ~5 s alone; many at once on two cores take several times that.
inline constexpr int kBootTimeoutMs = 180000;
// How long `delete --force` and friends wait for a shim to go.
inline constexpr int kStopTimeoutMs = 15000;
// A guest that has not acted on SIGKILL for the container after this long
// (hung, or its agent wedged) has its VM stopped: SIGKILL always kills.
inline constexpr int kGuestKillTimeoutMs = 10000;
// Console bytes kept in memory for error messages.
inline constexpr size_t kConsoleTail = 2048;
inline constexpr size_t kConsoleLogMax = 1u << 20;

// A working KVM boots the guest to the agent in well under a second.
inline constexpr int kKvmProbeTimeoutMs = 10000;
inline constexpr const char* kQemuBinary = "qemu-system-x86_64";
// Machine type by accelerator. Under TCG, microvm (no HPET, no ACPI PM
// timer) fails TSC calibration and hangs in about a third of boots on a
// loaded host; q35 calibrates against its PM timer and never did in our
// runs, for ~0.4 s more (bench/README.md). KVM guests use kvm-clock, so
// they get the faster microvm.
inline constexpr const char* kQemuMachineKvm = "microvm";
inline constexpr const char* kQemuMachineTcg = "q35,sata=off,smbus=off";
// TCG's translated-code cache. QEMU reserves 1 GiB and keeps whatever a
// boot translated (~52 MiB of RSS per idle VM); 32 MiB (a boot fills it
// and flushes once) cut an idle VM's RSS by 25 MiB at no measurable boot
// or exec cost. Smaller costs real work: a Python workload took 45% longer
// with 16 MiB and 25% with 24 (bench/README.md).
inline constexpr unsigned kTcgCodeCacheMiB = 32;
inline constexpr const char* kShareTag = "husk";
// The guest's caching of a virtio-fs share (virtiofsd -o cache=): see
// docs/design.md "virtio-fs" for what each mode measured.
inline constexpr const char* kVirtiofsCache = "auto";
// The driver adds its console and channel (console=, husk.channel=).
// cryptomgr.notests: the kernel's self-tests of its own cipher code took
// 0.3 s of a 2.1 s TCG boot (initcall_debug: crypto_algapi_init); they
// check the implementations against test vectors, which guards nothing
// in a VM whose CPU the host emulates or virtualizes. (fips=1 ignores it.)
inline constexpr const char* kKernelCmdline = "panic=-1 cryptomgr.notests";

// Annotations husk reads from config.json.
inline constexpr const char* kAnnotationBootTimeout = "org.husk.boot-timeout";  // seconds
// "off": this container's VM boots on its own, no template made or used.
inline constexpr const char* kAnnotationTemplate = "org.husk.template";

// VM templates (src/husk/vm_template.h): the most their directory holds
// (the least recently used go first), and how long a maker's save may take.
inline constexpr uint64_t kTemplateCacheMiB = 2048;
// A restore that has not reached the guest's agent by then is given up
// on, and the VM boots instead (a restore takes well under a second).
inline constexpr int kTemplateRestoreTimeoutMs = 30000;

}  // namespace husk::defaults
