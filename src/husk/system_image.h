// System images (issue 27): an OCI image that carries its own kernel boots
// it. `org.husk.kernel` names a bzImage or an ELF vmlinux (with a PVH
// entry) inside the rootfs; the VM boots
// that kernel with husk's initramfs (the agent as the first stage, stacked
// on the image's own initrd where `org.husk.initrd` names one), whose
// modules are the image's own (/lib/modules/<its release>) unless the
// release is the one husk's initramfs was built for. The container's
// process is the image's init, PID 1 of the container's PID namespace, as
// the spec says; SIGTERM becomes the init's power-off request.
#pragma once
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "husk/result.h"
#include "husk/spec.h"
#include "sys/fd.h"

namespace husk::system_image {

inline constexpr const char* kAnnotationKernel = "org.husk.kernel";
inline constexpr const char* kAnnotationInitrd = "org.husk.initrd";
inline constexpr const char* kAnnotationPoweroff = "org.husk.poweroff-signal";
inline constexpr const char* kAnnotationStdio = "org.husk.stdio";

// org.husk.stdio=console: the init's stdio is a terminal in the guest (its
// /dev/console, its controlling tty), relayed as the container's stdio
// even when process.terminal is false: an image's init writes its boot
// status there and runs a getty on it, as on a VM's console. "init" (the
// default): the init's stdio as the spec says. Else an error.
Result<bool> console_stdio(const Spec& spec);

// The part of a bzImage's boot header husk reads (Documentation/arch/x86/boot.rst).
struct Kernel {
    std::string version;  // the header's kernel_version string (a vmlinux: its banner's, after "Linux version ")
    std::string release;  // its first word ("6.1.0-50-amd64"): /lib/modules/<release>, modules' vermagic
    bool elf = false;     // an ELF vmlinux (booted through its PVH entry), not a bzImage
};
// The bytes the header and its version string are within: the boot
// sector and the setup code (at most 64 sectors of it here).
inline constexpr size_t kHeadBytes = 65 * 512;
// `head`: the file's first bytes (up to kHeadBytes). A 64-bit bzImage of
// boot protocol 2.12 or later, else an error saying what it is instead.
Result<Kernel> parse_bzimage(std::string_view head);

// An ELF vmlinux, read through `fd` (`size` bytes): a 64-bit x86 executable
// with the PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, CONFIG_PVH), which
// QEMU, Firecracker and Cloud Hypervisor boot it through, as husk's own
// kernel; its release is its banner's ("Linux version <release> (...").
// Else an error naming what is missing.
Result<Kernel> parse_vmlinux(int fd, uint64_t size);
inline constexpr uint64_t kVmlinuxLimit = uint64_t(1) << 30;

// The kernel release the modules of an initramfs (newc cpio, as
// rootfs-builder writes husk's) were built for: the vermagic of its first
// lib/modules/*.ko.
Result<std::string> initramfs_release(std::string_view cpio);
// The regular files under lib/modules/ (not below it) of a newc cpio, by
// name, with their contents (views into `cpio`): the order files and the
// modules.
std::map<std::string, std::string_view> initramfs_modules(std::string_view cpio);
// One newc cpio of regular files and directories (names without a leading
// '/', parents listed before children), fixed owners and mtimes.
std::string cpio_newc(const std::vector<std::pair<std::string, std::string>>& files);

// A module's name as the kernel compares them: '-' is '_'.
std::string module_name(std::string_view file);

// The image's kernel modules, as its /lib/modules/<release> lists them.
struct ImageModules {
    // name -> path relative to /lib/modules/<release>, and its dependencies' names
    std::map<std::string, std::pair<std::string, std::vector<std::string>>> modules;
    std::set<std::string> builtin;
};
// modules.dep and modules.builtin, as depmod writes them.
ImageModules parse_module_index(const std::string& modules_dep, const std::string& modules_builtin);
// Husk's order files with the image's modules: each name becomes its
// dependencies (first) and itself, a name built into the image's kernel is
// dropped. `order`: the order files' names and contents. Returns the new
// order files and the module files (name.ko) they need. A module the
// image neither has nor builds in is an error naming it.
struct Rewritten {
    std::map<std::string, std::string> order;
    std::vector<std::string> needed;  // module names, each once
};
Result<Rewritten> rewrite_orders(const std::map<std::string, std::string>& order, const ImageModules& image,
                                 const std::string& release);

// What the annotations ask for: the kernel's path, and the image's initrd's
// (empty: none), both absolute paths inside the rootfs. None without
// org.husk.kernel; an initrd without a kernel, or a relative path, is an
// error.
struct Requested {
    std::string kernel, initrd;
};
Result<std::optional<Requested>> requested(const Spec& spec);

// The image's initrd is stacked under husk's initramfs: the kernel unpacks
// the image's archive first (so an early-microcode cpio at its head stays
// the first, as the kernel requires) and husk's after it, whose /init (the
// agent) replaces the image's. The first bytes must be a newc cpio or a
// compression the kernel can unpack an initramfs from; returns its name.
inline constexpr size_t kInitrdLimit = size_t(512) << 20;
Result<std::string> initrd_format(std::string_view head);

// The image's kernel, opened inside `rootfs` (no symlink or ".." leads out
// of it) and read: a regular file that parse_bzimage or parse_vmlinux takes.
struct Opened {
    sys::Fd fd;
    Kernel kernel;
};
Result<Opened> open_kernel(const std::string& rootfs, const std::string& path);

// What the VM boots for an image's kernel, written into `dir`: the kernel
// (a copy: the rootfs is the container's to change) and the initrd (husk's
// `initrd` as it is when its modules are for the image's release and the
// image has no initrd; else a copy of the image's initrd, husk's, and the
// image's modules appended, in that order). Checks everything first:
// nothing is written on an error.
struct Boot {
    std::string kernel, initrd;
    std::string why;  // for --debug: which modules
};
Result<Boot> prepare_boot(const std::string& rootfs, const Requested& req, const std::string& initrd,
                          const std::string& dir);
// The same checks, writing nothing (husk create's, before anything starts):
// the kernel, and what --debug says.
struct Checked {
    Kernel kernel;
    std::string why;
};
Result<Checked> check(const std::string& rootfs, const Requested& req, const std::string& initrd);

// The signal that asks the image's init to power off, which a SIGTERM for
// the container becomes (as a VM's power button): the annotation's, else
// by what process.args[0] is in the image: systemd SIGRTMIN+4, busybox's
// init SIGUSR2; else none (SIGTERM goes as it is).
Result<std::optional<int>> poweroff_signal(const Spec& spec, const std::string& rootfs);

}  // namespace husk::system_image
