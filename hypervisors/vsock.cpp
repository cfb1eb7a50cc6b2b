#include "hypervisors/vsock.h"

#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "sys/sys.h"

namespace husk {

Result<VsockDial> VsockDial::connecting(sys::Fd s, const void* addr, unsigned len, const char* what) {
    VsockDial d;
    if (::connect(s.get(), static_cast<const sockaddr*>(addr), socklen_t(len)) < 0 && errno != EINPROGRESS)
        return fail_errno(what);
    d.s_ = std::move(s);  // connected, or connecting: step() says which when it is writable
    return d;
}

Result<VsockDial> VsockDial::kernel(uint32_t cid, uint32_t port) {
    sys::Fd s(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s) return fail_errno("vsock socket");
    sockaddr_vm addr;
    std::memset(&addr, 0, sizeof addr);
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    return connecting(std::move(s), &addr, sizeof addr, "vsock connect");
}

short VsockDial::events() const { return hybrid_ ? POLLIN : POLLOUT; }

Result<void> parse_hybrid_vsock_reply(std::string_view line) {
    // "OK <the host-side port the VMM assigned>"
    if (line.size() < 4 || line.substr(0, 3) != "OK ") return fail("hybrid vsock: unexpected answer", EPROTO);
    for (char c : line.substr(3))
        if (c < '0' || c > '9') return fail("hybrid vsock: unexpected answer", EPROTO);
    return {};
}

Result<VsockDial> VsockDial::hybrid(const std::string& uds, uint32_t port) {
    VsockDial d;
    d.hybrid_ = true;
    d.s_ = TRY_CTX(sys::unix_connect(uds), "hybrid vsock");
    TRY(sys::set_nonblock(d.s_.get(), true));
    // A few bytes into a fresh socket's empty buffer: they go at once.
    TRY_CTX(sys::write_all(d.s_.get(), "CONNECT " + std::to_string(port) + "\n"), "hybrid vsock");
    return d;
}

Result<std::optional<sys::Fd>> VsockDial::step() {
    if (!hybrid_) {
        pollfd p{s_.get(), POLLOUT, 0};
        if (::poll(&p, 1, 0) < 0) return fail_errno("poll");
        int err = 0;
        socklen_t len = sizeof err;
        if (::getsockopt(s_.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) return fail_errno("vsock connect");
        if (err) return fail_errno("vsock connect", err);
        if (p.revents & (POLLERR | POLLHUP)) return fail("vsock connect: the guest is not listening yet", ECONNREFUSED);
        if (!(p.revents & POLLOUT)) return std::optional<sys::Fd>();  // still connecting
        return std::optional<sys::Fd>(std::move(s_));
    }
    for (;;) {
        char c;  // a byte at a time: what follows the line is the agent's
        ssize_t n = ::read(s_.get(), &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return std::optional<sys::Fd>();
        if (n == 0 || (n < 0 && errno == ECONNRESET)) return fail("hybrid vsock: the guest is not listening yet", ECONNREFUSED);
        if (n < 0) return fail_errno("hybrid vsock: read");
        if (c == '\n') break;
        if (line_.size() >= 32) return fail("hybrid vsock: unexpected answer", EPROTO);
        line_ += c;
    }
    TRY(parse_hybrid_vsock_reply(line_));
    return std::optional<sys::Fd>(std::move(s_));
}

Result<sys::Fd> hybrid_vsock_connect(const std::string& uds, uint32_t port, int timeout_ms) {
    auto d = TRY(VsockDial::hybrid(uds, port));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        if (auto c = TRY(d.step())) return std::move(*c);
        int left = sys::ms_left(deadline);
        if (left <= 0 || !TRY(sys::wait_fd(d.fd(), POLLIN, left))) return fail("hybrid vsock: no answer", ETIMEDOUT);
    }
}

}  // namespace husk
