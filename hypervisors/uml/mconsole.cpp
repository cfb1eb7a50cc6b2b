#include "hypervisors/uml/mconsole.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>

#include "sys/sys.h"

namespace husk::uml {

namespace {
// The wire layout (arch/um/include/shared/mconsole.h): three u32s, data.
struct Request {
    uint32_t magic, version, len;
    char data[kMconsoleMaxData];
};
struct Reply {
    uint32_t err, more, len;
    char data[kMconsoleMaxData];
};
}  // namespace

Result<std::string> mconsole_request(const std::string& command) {
    if (command.size() >= kMconsoleMaxData) return fail("mconsole command too long", EINVAL);
    Request r{};
    r.magic = kMconsoleMagic;
    r.version = kMconsoleVersion;
    r.len = uint32_t(command.size());
    std::memcpy(r.data, command.data(), command.size());
    return std::string(reinterpret_cast<const char*>(&r), sizeof r);
}

Result<MconsoleReply> mconsole_parse_reply(const char* buf, size_t n) {
    Reply r{};
    if (n < offsetof(Reply, data) || n > sizeof r) return fail("mconsole: reply of " + std::to_string(n) + " bytes", EPROTO);
    std::memcpy(&r, buf, n);
    if (r.len > n - offsetof(Reply, data)) return fail("mconsole: reply length past its datagram", EPROTO);
    MconsoleReply out;
    out.err = r.err;
    out.more = r.more != 0;
    out.data.assign(r.data, strnlen(r.data, r.len));
    return out;
}

Result<std::string> mconsole_command(const std::string& socket_path, const std::string& command, int timeout_ms) {
    auto req = TRY(mconsole_request(command));
    auto s = TRY(sys::unix_connect(socket_path, SOCK_DGRAM));
    // UML answers the sender's address: an autobound abstract name.
    sockaddr_un self{};
    self.sun_family = AF_UNIX;
    if (::bind(s.get(), reinterpret_cast<sockaddr*>(&self), sizeof(sa_family_t)) < 0) return fail_errno("mconsole: bind");
    if (::send(s.get(), req.data(), req.size(), 0) != ssize_t(req.size())) return fail_errno("mconsole: send");
    std::string text;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        int left = sys::ms_left(deadline);
        if (left <= 0 || !TRY(sys::wait_fd(s.get(), POLLIN, left))) return fail("mconsole: no reply to " + command, ETIMEDOUT);
        char buf[sizeof(Reply)];
        ssize_t n = ::recv(s.get(), buf, sizeof buf, 0);
        if (n < 0) return fail_errno("mconsole: recv");
        auto r = TRY(mconsole_parse_reply(buf, size_t(n)));
        text += r.data;
        if (r.err) return fail("mconsole " + command + ": " + text, EIO);
        if (!r.more) return text;
    }
}

}  // namespace husk::uml
