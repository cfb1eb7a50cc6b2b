// The host side of the agent's vsock channel: the kernel's AF_VSOCK
// (vhost-vsock, QEMU), or a VMM's "hybrid vsock" unix socket (Firecracker,
// Cloud Hypervisor).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk {

// One connection attempt to the guest agent over AF_VSOCK (vhost-vsock).
// Fails fast while the guest is still booting; the caller retries.
Result<sys::Fd> vsock_connect(uint32_t cid, uint32_t port);

// One connection attempt through a hybrid vsock that never blocks: start()
// connects to the VMM's unix socket `uds` and sends "CONNECT <port>\n";
// step(), whenever fd() is readable, takes what has arrived of the VMM's
// answer and returns the channel (non-blocking) once "OK <host port>\n" is
// complete, nothing yet, or why not (ECONNREFUSED: the guest is not
// listening yet; EPROTO: another answer). Nothing after the line is read.
class HybridVsockDial {
public:
    static Result<HybridVsockDial> start(const std::string& uds, uint32_t port);
    int fd() const { return s_.get(); }
    Result<std::optional<sys::Fd>> step();

private:
    sys::Fd s_;
    std::string line_;
};

// The same, waiting: connect to the VMM's unix
// socket `uds`, send "CONNECT <port>\n" and wait up to `timeout_ms` for
// "OK <host port>\n". A VMM whose guest is not listening yet closes the
// connection (ECONNREFUSED: retry). Nothing after the OK line is read.
// The returned socket is non-blocking.
Result<sys::Fd> hybrid_vsock_connect(const std::string& uds, uint32_t port, int timeout_ms);
// The VMM's answer line (without its newline): ok, or why not. Pure.
Result<void> parse_hybrid_vsock_reply(std::string_view line);

}  // namespace husk
