// The host side of the agent's vsock channel: the kernel's AF_VSOCK
// (vhost-vsock, QEMU), or a VMM's "hybrid vsock" unix socket (Firecracker,
// Cloud Hypervisor).
#pragma once
#include <poll.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk {

// One connection attempt to the guest agent that never blocks, for the
// shim's loop to poll on fd() for events():
//  * kernel(): AF_VSOCK (vhost-vsock): a non-blocking connect to cid:port;
//    done once the socket is writable. A guest that is still booting
//    refuses or resets it: retry.
//  * hybrid(): a VMM's hybrid vsock (Firecracker, Cloud Hypervisor):
//    connect to its unix socket `uds` and send "CONNECT <port>\n"; done
//    once "OK <host port>\n" has arrived. A VMM whose guest is not
//    listening yet closes the connection (ECONNREFUSED: retry), another
//    answer is EPROTO. Nothing after the line is read: it is the agent's.
// step() takes what has happened: the channel (non-blocking), nothing yet,
// or why not.
class VsockDial {
public:
    static Result<VsockDial> kernel(uint32_t cid, uint32_t port);
    static Result<VsockDial> hybrid(const std::string& uds, uint32_t port);
    // The kernel dial's own path for any stream socket `s` (non-blocking)
    // and address: the unit tests drive it with TCP on a host without a
    // vsock transport.
    static Result<VsockDial> connecting(sys::Fd s, const void* addr, unsigned len, const char* what);
    int fd() const { return s_.get(); }
    short events() const;
    Result<std::optional<sys::Fd>> step();

private:
    sys::Fd s_;
    bool hybrid_ = false;
    std::string line_;
};

// A hybrid dial, waiting up to `timeout_ms` for its answer (tests and
// one-off callers; the shim's loop polls a VsockDial instead).
Result<sys::Fd> hybrid_vsock_connect(const std::string& uds, uint32_t port, int timeout_ms);
// The VMM's answer line (without its newline): ok, or why not. Pure.
Result<void> parse_hybrid_vsock_reply(std::string_view line);

}  // namespace husk
