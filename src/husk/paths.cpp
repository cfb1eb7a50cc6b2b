#include "husk/paths.h"

#include <unistd.h>

#include <cstdlib>
#include <sstream>

#include "husk/defaults.h"
#include "sys/sys.h"

#ifndef HUSK_DATADIR
#define HUSK_DATADIR "/usr/local/share/husk"
#endif
#ifndef HUSK_LIBEXECDIR
#define HUSK_LIBEXECDIR "/usr/local/libexec/husk"
#endif

namespace husk {

StatePaths state_paths(const std::string& root, const std::string& id) {
    StatePaths p;
    p.root = root;
    p.dir = root + "/" + id;
    p.state_json = p.dir + "/state.json";
    p.shim_sock = p.dir + "/shim.sock";
    p.vmm_dir = p.dir + "/" + kVmmDirName;
    p.agent_sock = p.vmm_dir + "/agent.sock";
    p.qmp_sock = p.vmm_dir + "/qmp.sock";
    p.vsock_sock = p.vmm_dir + "/vsock.sock";
    p.vsock_vhost_sock = p.vmm_dir + "/vsock-vhost.sock";
    p.virtiofs_sock = p.vmm_dir + "/fs.sock";
    p.console_log = p.dir + "/console.log";
    p.vmm_log = p.dir + "/vmm.log";
    p.shared = p.dir + "/shared";
    return p;
}

Result<void> validate_id(const std::string& id) {
    if (id.empty()) return fail("container id must not be empty", EINVAL);
    if (id == "." || id == "..") return fail("invalid container id \"" + id + "\"", EINVAL);
    if (id.size() > 1024) return fail("container id too long", EINVAL);
    for (char c : id) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '+' ||
                  c == '-' || c == '.';
        if (!ok) return fail("invalid container id \"" + id + "\": only [A-Za-z0-9_+.-] allowed", EINVAL);
    }
    return {};
}

// First existing of: $ENV, next to the running binary, installed path,
// build tree (husk and husk-shim at the top of it, the image in rootfs-builder/).
static std::string locate(const char* env, const std::string& name, const std::string& installed,
                          const std::string& build_rel) {
    if (const char* v = std::getenv(env); v && *v) return v;
    std::string here = sys::self_exe_dir();
    for (const auto& c : {here + "/" + name, here + "/" + build_rel + "/" + name, installed + "/" + name})
        if (sys::exists(c)) return c;
    return installed + "/" + name;
}

std::string find_shim_binary() { return locate("HUSK_SHIM", "husk-shim", HUSK_LIBEXECDIR, "shim"); }
std::string find_guest_kernel() { return locate("HUSK_KERNEL", "vmlinux", HUSK_DATADIR, "rootfs-builder"); }
std::string find_guest_initrd() { return locate("HUSK_INITRD", "initramfs.img", HUSK_DATADIR, "rootfs-builder"); }

bool rootless() {
    if (::geteuid() != 0) return true;
    // The initial user namespace maps every id onto itself.
    auto map = sys::read_file("/proc/self/uid_map").value_or("");
    std::istringstream in(map);
    unsigned long long inside = 1, outside = 1, count = 0;
    in >> inside >> outside >> count;
    return !(inside == 0 && outside == 0 && count == 4294967295ull);
}

std::string user_dir(const char* xdg_var, const char* home_rel) {
    if (const char* x = ::getenv(xdg_var); x && *x) return x;
    const char* home = ::getenv("HOME");
    return std::string(home && *home ? home : "/") + "/" + home_rel;
}

std::string default_state_root() {
    const char* xdg = ::getenv("XDG_RUNTIME_DIR");
    if (!xdg || !*xdg || !rootless()) return defaults::kStateRoot;
    if (::geteuid() == 0) {
        const char* user = ::getenv("USER");
        if (user && std::string(user) == "root") return defaults::kStateRoot;
    }
    return std::string(xdg) + "/husk";
}

}  // namespace husk
