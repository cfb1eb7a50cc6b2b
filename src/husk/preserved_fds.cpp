#include "husk/preserved_fds.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <string>

namespace husk {

Result<proto::Flow> fd_flow(int fd, int open_flags, mode_t type, bool listening) {
    std::string what = "--preserve-fds: fd " + std::to_string(fd);
    if (open_flags & O_PATH) return fail(what + " is an O_PATH fd: only a stream can be relayed into the VM", EINVAL);
    if (S_ISDIR(type)) return fail(what + " is a directory: only a stream can be relayed into the VM", EINVAL);
    if (S_ISSOCK(type) && listening)
        return fail(what + " is a listening socket: a VM cannot share it (pass a connected socket, or listen inside "
                           "the container)", EINVAL);
    switch (open_flags & O_ACCMODE) {
        case O_RDONLY: return proto::Flow::In;
        case O_WRONLY: return proto::Flow::Out;
        case O_RDWR: return proto::Flow::Both;
    }
    return fail(what + ": unknown access mode", EINVAL);
}

Result<proto::Flow> fd_flow(int fd, int shown) {
    if (shown < 0) shown = fd;
    int flags = ::fcntl(fd, F_GETFL);
    struct stat st;
    if (flags < 0 || ::fstat(fd, &st) < 0)
        return fail_errno("--preserve-fds: fd " + std::to_string(shown) + " is not open");
    int listening = 0;
    socklen_t len = sizeof listening;
    if (S_ISSOCK(st.st_mode) && ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0) listening = 0;
    return fd_flow(shown, flags, st.st_mode, listening != 0);
}

Result<std::vector<proto::Flow>> preserved_fd_flows(int n, int first) {
    if (n < 0) return fail("--preserve-fds: must not be negative, got " + std::to_string(n), EINVAL);
    if (first + n - 1 > int(proto::kMaxStreamFd))
        return fail("--preserve-fds: at most " + std::to_string(int(proto::kMaxStreamFd) - first + 1) + " fds, got " +
                        std::to_string(n), EINVAL);
    std::vector<proto::Flow> flows;
    for (int fd = first; fd < first + n; ++fd) flows.push_back(TRY(fd_flow(fd)));
    return flows;
}

std::vector<int> preserved_fds(int n, int first) {
    std::vector<int> fds;
    for (int fd = first; fd < first + n; ++fd) fds.push_back(fd);
    return fds;
}

}  // namespace husk
