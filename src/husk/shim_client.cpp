#include "husk/shim_client.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>

#include "sys/sys.h"

namespace husk {

Result<proto::ControlReply> shim_call(const StatePaths& p, const proto::ControlRequest& req, int timeout_ms) {
    auto fd = TRY_CTX(sys::unix_connect(p.shim_sock), "contact shim");
    TRY_CTX(sys::write_all(fd.get(), proto::to_json(req).dump() + "\n"), "contact shim");
    std::string buf;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (buf.find('\n') == std::string::npos) {
        int left = sys::ms_left(deadline);
        if (left <= 0 || !TRY(sys::wait_fd(fd.get(), POLLIN, left))) return fail("shim did not answer", ETIMEDOUT);
        char tmp[4096];
        ssize_t n = ::read(fd.get(), tmp, sizeof tmp);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read from shim");
        }
        if (n == 0) return fail("shim closed the connection", ECONNRESET);
        buf.append(tmp, size_t(n));
        if (buf.size() > (1 << 20)) return fail("shim reply too large", EPROTO);
    }
    auto r = TRY_CTX(proto::control_reply_from_json(nlohmann::json::parse(buf.substr(0, buf.find('\n')), nullptr, false)),
                     "reply from shim");
    if (!r.ok) return fail(r.error, r.code ? r.code : EIO);
    return r;
}

}  // namespace husk
