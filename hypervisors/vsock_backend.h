// husk-vsock, QEMU's vsock device where the host has no /dev/vhost-vsock
// (hypervisors/husk-vsock/): one per VM, started before its VMM like a
// virtio-fs share's daemon, in a jail of its own that sees only the VMM's
// socket directory. QEMU's vhost-user-vsock device connects to it; the
// shim reaches the agent through its hybrid socket (vsock.h's hybrid dial).
#pragma once
#include <sys/types.h>

#include <string>
#include <vector>

#include "husk/hypervisor.h"
#include "husk/result.h"

namespace husk {

// HUSK_VSOCK, else next to this binary, else the installed one; "" when
// there is none, or HUSK_VSOCK is "none" (virtio-serial, as without it).
std::string find_husk_vsock();

// Its command line (pure; fds as it is given them, the hybrid socket's
// path as its jail sees it).
inline constexpr int kVsockBackendSocketFd = 3;
inline constexpr int kVsockBackendUdsFd = 4;
std::vector<std::string> husk_vsock_argv(const std::string& binary, const std::string& uds, uint32_t guest_cid);

// Start the backend for cfg.channel (host paths: vhost_socket and the
// hybrid socket_path, both bound here before it starts, so the VMM and
// the shim can connect at once). Returns its pid (its jail's reaper).
Result<pid_t> start_husk_vsock(const VmConfig& cfg, const std::string& workdir, const std::string& log_path);

}  // namespace husk
