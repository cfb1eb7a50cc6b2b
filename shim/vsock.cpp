#include "shim/vsock.h"

#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>

#include "sys/sys.h"

namespace husk {

Result<sys::Fd> vsock_connect(uint32_t cid, uint32_t port) {
    sys::Fd s(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s) return fail_errno("vsock socket");
    sockaddr_vm addr;
    std::memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        if (errno != EINPROGRESS) return fail_errno("vsock connect");
        if (!TRY(sys::wait_fd(s.get(), POLLOUT, 100))) return fail("vsock connect: timed out", ETIMEDOUT);
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) return fail_errno("vsock connect", err);
    }
    return s;
}

}  // namespace husk
