#include "protocol/creator.h"

#include <cerrno>
#include <unistd.h>

#include "protocol/decode.h"
#include "sys/sys.h"

namespace husk::proto {

using nlohmann::json;

namespace {

constexpr size_t kMaxLine = 1 << 16;

struct KindName {
    Report::Kind kind;
    const char* name;
};
constexpr KindName kKinds[] = {{Report::Kind::Progress, "progress"},
                               {Report::Kind::Hooks, "hooks"},
                               {Report::Kind::Go, "go"},
                               {Report::Kind::Ok, "ok"},
                               {Report::Kind::Error, "error"}};

const char* kind_name(Report::Kind k) {
    for (const auto& x : kKinds)
        if (x.kind == k) return x.name;
    return "?";
}

}  // namespace

json to_json(const Report& r) {
    json j = {{"report", kind_name(r.kind)}};
    if (r.kind == Report::Kind::Progress) j["step"] = r.text;
    if (r.kind == Report::Kind::Error) {
        j["error"] = r.text;
        if (r.code) j["errno"] = r.code;
    }
    return j;
}

Result<Report> report_from_json(const json& j) {
    auto o = TRY(Object::of(j, "report"));
    std::string kind;
    TRY(o.req("report", kind));
    Report r;
    const KindName* k = nullptr;
    for (const auto& x : kKinds)
        if (kind == x.name) k = &x;
    if (!k) return bad_field("report.report", "unknown kind " + kind);
    r.kind = k->kind;
    if (r.kind == Report::Kind::Progress) TRY(o.req("step", r.text));
    if (r.kind == Report::Kind::Error) {
        TRY(o.req("error", r.text));
        TRY(o.opt("errno", r.code));
        if (o.has("errno") && (r.code < 1 || r.code > 4095)) return bad_field("report.errno", "expected an errno in 1..4095");
    }
    if (r.text.find('\n') != std::string::npos) return bad_field("report", "a message is one line");
    TRY(o.end());
    return r;
}

Report report_error(const Error& e) {
    std::string why = e.message;
    for (auto& c : why)
        if (c == '\n') c = ' ';
    return {.kind = Report::Kind::Error, .text = why, .code = e.code > 0 && e.code <= 4095 ? e.code : 0};
}

Result<void> ReportLink::send(const Report& r) const { return sys::write_all(fd_, to_json(r).dump() + "\n"); }

Result<std::optional<Report>> ReportLink::next() {
    for (;;) {
        if (auto nl = buf_.find('\n'); nl != std::string::npos) {
            json j = json::parse(buf_.substr(0, nl), nullptr, false);
            buf_.erase(0, nl + 1);
            return TRY(report_from_json(j));
        }
        if (buf_.size() > kMaxLine) return fail("report: a line over 64 KiB", EPROTO);
        char tmp[4096];
        ssize_t n = ::read(fd_, tmp, sizeof tmp);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno("read report");
        if (n == 0) {
            if (!buf_.empty()) return fail("report: a message cut short", EPROTO);
            return std::optional<Report>();
        }
        buf_.append(tmp, size_t(n));
    }
}

Result<void> await_report(int fd, const std::string& died) {
    ReportLink link(fd);
    for (;;) {
        auto m = TRY(link.next());
        if (!m) return fail(died, EIO);
        if (m->kind == Report::Kind::Ok) return {};
        if (m->kind == Report::Kind::Error) return fail(m->text, m->code ? m->code : EIO);
        if (m->kind != Report::Kind::Progress) return fail(std::string("report: unexpected ") + kind_name(m->kind), EPROTO);
    }
}

}  // namespace husk::proto
