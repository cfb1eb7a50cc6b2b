// A minimal QMP client: greeting, capabilities negotiation, commands.
// QMP is line-delimited JSON; asynchronous events are skipped.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk::qemu {

class Qmp {
public:
    Qmp() = default;
    explicit Qmp(sys::Fd fd) : fd_(std::move(fd)) {}
    bool connected() const { return fd_.valid(); }
    Result<void> handshake(int timeout_ms);
    Result<nlohmann::json> execute(const std::string& cmd, const nlohmann::json& args = nullptr, int timeout_ms = 5000);
    // The same, with `fd` passed alongside (SCM_RIGHTS), as getfd takes it.
    Result<nlohmann::json> execute_with_fd(const std::string& cmd, const nlohmann::json& args, int fd, int timeout_ms = 5000);

private:
    Result<nlohmann::json> read_message(int timeout_ms);
    Result<nlohmann::json> read_reply(const std::string& cmd, int timeout_ms);
    sys::Fd fd_;
    std::string buf_;
};

// Parse one QMP line; public for tests and fuzzing.
Result<nlohmann::json> parse_qmp_line(const std::string& line);

}  // namespace husk::qemu
