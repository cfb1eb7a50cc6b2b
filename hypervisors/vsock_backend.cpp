#include "hypervisors/vsock_backend.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "husk/paths.h"
#include "hypervisors/jail.h"
#include "sys/sys.h"

#ifndef HUSK_LIBEXECDIR
#define HUSK_LIBEXECDIR "/usr/local/libexec/husk"
#endif

namespace husk {

std::string find_husk_vsock() {
    if (const char* e = std::getenv("HUSK_VSOCK"); e && *e)
        return std::string(e) == "none" ? "" : sys::find_program(e).value_or("");
    std::string here = sys::self_exe_dir();
    for (const auto& c : {here + "/husk-vsock", here + "/../husk-vsock", std::string(HUSK_LIBEXECDIR) + "/husk-vsock"})
        if (::access(c.c_str(), X_OK) == 0) return sys::realpath(c).value_or(c);
    return "";
}

std::vector<std::string> husk_vsock_argv(const std::string& binary, const std::string& uds, uint32_t guest_cid) {
    return {binary, "--socket-fd", std::to_string(kVsockBackendSocketFd), "--uds-fd", std::to_string(kVsockBackendUdsFd),
            "--uds", uds, "--guest-cid", std::to_string(guest_cid)};
}

Result<pid_t> start_husk_vsock(const VmConfig& cfg, const std::string& workdir, const std::string& log_path) {
    std::string binary = find_husk_vsock();
    if (binary.empty()) return fail("husk-vsock not found (build it, or set HUSK_VSOCK)", ENOENT);
    std::string root = workdir + "/vsock-root";
    if (::mkdir(root.c_str(), 0700) < 0 && errno != EEXIST) return fail_errno("mkdir " + root);
    Jail j = base_jail(root);
    std::string in_jail = jail_binary(j, binary);
    // The VMM's socket directory, where guest-initiated streams find
    // their <uds>_<port> listeners; nothing else of the host.
    const std::string& uds_path = cfg.channel.plugged_uds.empty() ? cfg.channel.socket_path : cfg.channel.plugged_uds;
    j.mounts.push_back({sys::dirname(uds_path), kJailVmmDir, false, false});
    j.keep_caps = {};
    j.lifeline_fd = cfg.lifeline_fd;

    auto vhost = TRY_CTX(sys::unix_listen(cfg.channel.vhost_socket, 1), "husk-vsock socket");
    auto uds = TRY_CTX(sys::unix_listen(uds_path, 16), "hybrid vsock socket");
    auto log = TRY(sys::open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600));
    auto devnull = TRY(sys::open("/dev/null", O_RDONLY));
    sys::SpawnOptions o;
    o.fds = {{devnull.get(), 0}, {log.get(), 1}, {log.get(), 2}, {vhost.get(), kVsockBackendSocketFd}, {uds.get(), kVsockBackendUdsFd}};
    o.die_with_parent = true;
    o.path = in_jail;
    jail_spawn(j, o);
    o.cwd = kJailVmmDir;
    return TRY_CTX(sys::spawn(husk_vsock_argv(in_jail, sys::basename(uds_path), cfg.channel.vsock_cid), o),
                   "launch husk-vsock");
}

}  // namespace husk
