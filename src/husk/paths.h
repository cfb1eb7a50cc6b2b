// Every path under the state root, computed here and nowhere else.
#pragma once
#include <string>

#include "husk/result.h"

namespace husk {

// <dir>/vmm: the VMM's working directory, holding every socket it serves
// or connects to (its jail's /vmm: hypervisors/jail.h).
inline constexpr const char* kVmmDirName = "vmm";

struct StatePaths {
    std::string root;        // --root
    std::string dir;         // <root>/<id>
    std::string state_json;  // written atomically by husk/shim
    std::string shim_sock;   // control socket served by the shim
    std::string vmm_dir;     // <dir>/vmm
    std::string agent_sock;  // host end of the virtio-serial channel (in vmm/)
    std::string qmp_sock;    // QEMU's QMP connects here (in vmm/)
    std::string vsock_sock;  // a hybrid vsock: the VMM serves it (in vmm/)
    std::string vsock_vhost_sock;  // husk-vsock's vhost-user socket (in vmm/)
    std::string virtiofs_sock;  // virtiofsd's vhost-user socket (in vmm/)
    std::string console_log; // guest serial console
    std::string vmm_log;     // VMM's own stdout/stderr
    std::string shared;      // the directory exported to the guest
};

StatePaths state_paths(const std::string& root, const std::string& id);

// Whether we run without the host's root: a non-zero euid, or root of a
// user namespace (rootless podman runs its runtime as "root" in one).
bool rootless();
// A per-user base directory: $<xdg_var> (XDG_CONFIG_HOME, XDG_CACHE_HOME),
// else $HOME/<home_rel> ("/" when HOME is unset).
std::string user_dir(const char* xdg_var, const char* home_rel);
// --root's default, by runc's rule: /run/husk, or $XDG_RUNTIME_DIR/husk
// when rootless with XDG_RUNTIME_DIR set (unless USER is root).
std::string default_state_root();

// runc's rule: ^[\w+-\.]+$ (and not "." or "..").
Result<void> validate_id(const std::string& id);

// Where installed artifacts are, with build-tree fallbacks.
std::string find_shim_binary();
// The kernel every machine VMM (QEMU, Firecracker, Cloud Hypervisor)
// boots: the uncompressed ELF vmlinux, entered by its PVH note. Under TCG
// a bzImage spends ~4 s decompressing itself (bench/README.md), and QEMU
// keeps a private copy of it for fw_cfg. HUSK_KERNEL overrides (QEMU
// boots a bzImage too).
std::string find_guest_kernel();
std::string find_guest_initrd();

}  // namespace husk
