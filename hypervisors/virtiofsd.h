// virtiofsd: the host half of a virtio-fs share. One daemon per shared
// directory, started by the driver before its VMM, in a jail of its own
// that sees only that directory (jail.h), with its own seccomp filter and
// chroot sandbox on top; it ends when its VMM goes (the vhost-user socket
// closes), when the VMM's owner goes (the lifeline), or when killed.
#pragma once
#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "husk/hypervisor.h"
#include "husk/result.h"

namespace husk {

// HUSK_VIRTIOFSD, else QEMU's (Debian 12: /usr/lib/qemu/virtiofsd, in
// qemu-system-common), else one on PATH; "" when there is none.
std::string find_virtiofsd();

// The fd the daemon is given its listening vhost-user socket on.
inline constexpr int kVirtiofsdSocketFd = 3;
// The share's path in the daemon's jail.
inline constexpr const char* kVirtiofsdSource = "/share";

// The daemon's command line for `share` (pure; `binary` as the jail sees
// it, `nofile`: the fd limit it sets itself, 0 to leave it). It holds an
// fd per inode the guest knows of, hence a high limit.
std::vector<std::string> virtiofsd_argv(const Share& share, const std::string& binary, unsigned long nofile);

// The capabilities it keeps: a file server's, changing its fsuid/fsgid to
// each guest caller's, and chroot for its sandbox.
std::vector<int> virtiofsd_caps();

// Start the daemon for cfg.shares[index] (host paths), listening on its
// socket_path, with stdout/stderr to `log_path`. Returns its pid (its
// jail's reaper: killing that ends it).
Result<pid_t> start_virtiofsd(const VmConfig& cfg, size_t index, const std::string& workdir, const std::string& log_path);

// The daemons of a VM's virtio-fs shares, started before its VMM; killed
// (and reaped) when this goes, unless the VM took them (release()).
class ShareDaemons {
public:
    ShareDaemons() = default;
    ShareDaemons(ShareDaemons&& o) noexcept : pids_(std::move(o.pids_)) { o.pids_.clear(); }
    ShareDaemons& operator=(ShareDaemons&&) = delete;
    ~ShareDaemons();
    std::vector<pid_t> release() { return std::exchange(pids_, {}); }
    void add(pid_t p) { pids_.push_back(p); }

private:
    std::vector<pid_t> pids_;
};
// A daemon for each of cfg's virtio-fs shares.
Result<ShareDaemons> start_share_daemons(const VmConfig& cfg, const std::string& workdir, const std::string& log_path);

}  // namespace husk
