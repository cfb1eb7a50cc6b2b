#include "hypervisors/qemu/qmp.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>

#include "sys/sys.h"

namespace husk::qemu {

using nlohmann::json;

Result<json> parse_qmp_line(const std::string& line) {
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return fail("qmp: malformed message", EPROTO);
    return j;
}

Result<json> Qmp::read_message(int timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        auto nl = buf_.find('\n');
        if (nl != std::string::npos) {
            std::string line = buf_.substr(0, nl);
            buf_.erase(0, nl + 1);
            if (line.find_first_not_of(" \r\t") == std::string::npos) continue;
            return parse_qmp_line(line);
        }
        if (buf_.size() > (1u << 20)) return fail("qmp: message too large", EPROTO);
        int left = sys::ms_left(deadline);
        if (left <= 0) return fail("qmp: timed out", ETIMEDOUT);
        if (!TRY(sys::wait_fd(fd_.get(), POLLIN, left))) return fail("qmp: timed out", ETIMEDOUT);
        char tmp[4096];
        ssize_t n = ::read(fd_.get(), tmp, sizeof tmp);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            return fail_errno("qmp: read");
        }
        if (n == 0) return fail("qmp: connection closed", ECONNRESET);
        buf_.append(tmp, size_t(n));
    }
}

Result<void> Qmp::handshake(int timeout_ms) {
    auto greet = TRY(read_message(timeout_ms));
    if (!greet.contains("QMP")) return fail("qmp: unexpected greeting", EPROTO);
    TRY(execute("qmp_capabilities", nullptr, timeout_ms));
    return {};
}

Result<json> Qmp::execute(const std::string& cmd, const json& args, int timeout_ms) {
    if (!fd_) return fail("qmp: not connected", ENOTCONN);
    json req = {{"execute", cmd}};
    if (!args.is_null()) req["arguments"] = args;
    TRY_CTX(sys::write_all(fd_.get(), req.dump() + "\n"), "qmp: " + cmd);
    return read_reply(cmd, timeout_ms);
}

Result<json> Qmp::execute_with_fd(const std::string& cmd, const json& args, int fd, int timeout_ms) {
    if (!fd_) return fail("qmp: not connected", ENOTCONN);
    json req = {{"execute", cmd}, {"arguments", args}};
    TRY_CTX(sys::send_fds(fd_.get(), req.dump() + "\n", {fd}), "qmp: " + cmd);
    return read_reply(cmd, timeout_ms);
}

Result<json> Qmp::read_reply(const std::string& cmd, int timeout_ms) {
    for (;;) {
        auto msg = TRY_CTX(read_message(timeout_ms), "qmp: " + cmd);
        if (msg.contains("event")) continue;
        if (msg.contains("error")) {
            std::string desc = msg["error"].is_object() ? msg["error"].value("desc", "error") : "error";
            return fail("qmp: " + cmd + ": " + desc, EIO);
        }
        if (msg.contains("return")) return msg["return"];
        return fail("qmp: " + cmd + ": unexpected reply", EPROTO);
    }
}

}  // namespace husk::qemu
