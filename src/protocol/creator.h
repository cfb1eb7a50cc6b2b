// The link between a process and the one that started it, until the
// started one reports: the shim to `husk create` (a socketpair, the
// shim's --sync-fd), and an exec's or a pod member's relay to `husk exec`
// / `husk create` (a pipe each way). One JSON line per message, each a
// struct with one encoder and one strict decoder, like shim.sock's
// (control.h):
//
//   shim → husk create   progress* (a long step the caller waits on),
//                        then hooks (the create hooks may run now)
//   husk create → shim   go (they have run; the VM may start)
//   shim → husk create   ok, or error; then EOF
//   husk → relay         go (its create hooks have run)
//   relay → husk         ok, or error; then EOF
//
// EOF before ok or error means the reporter died: the reader names it.
#pragma once
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk::proto {

struct Report {
    enum class Kind { Progress, Hooks, Go, Ok, Error };
    Kind kind = Kind::Ok;
    std::string text{};  // progress: the step; error: why (one line)
    int code = 0;        // error: the errno the caller fails with, 0 when none fits
};
nlohmann::json to_json(const Report& r);
Result<Report> report_from_json(const nlohmann::json& j);
Report report_error(const Error& e);

// One end of such a link (not owned): lines in through a buffer, so that
// several messages in one read are each seen.
class ReportLink {
public:
    explicit ReportLink(int fd) : fd_(fd) {}
    Result<void> send(const Report& r) const;
    // The next message; nullopt at EOF. A line that is not a Report is an
    // error (EPROTO), as is one over 64 KiB.
    Result<std::optional<Report>> next();

private:
    int fd_;
    std::string buf_;
};

// What a relay's starter waits for: ok, or its error (with its errno,
// else EIO), or EOF (`died`).
Result<void> await_report(int fd, const std::string& died);

}  // namespace husk::proto
