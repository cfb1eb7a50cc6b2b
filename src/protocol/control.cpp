#include "protocol/control.h"

#include <cerrno>
#include <initializer_list>
#include <set>

namespace husk::proto {

using nlohmann::json;

namespace {

struct OpInfo {
    Op op;
    const char* name;
    std::set<std::string> required;  // besides "op"
    std::set<std::string> optional;
};

const std::vector<OpInfo>& ops() {
    static const std::vector<OpInfo> table = {
        {Op::Start, "start", {}, {"container"}},
        {Op::Kill, "kill", {"signal", "all"}, {"container"}},
        {Op::Pause, "pause", {}, {"container"}},
        {Op::Resume, "resume", {}, {"container"}},
        {Op::Ps, "ps", {}, {"container"}},
        {Op::Stats, "stats", {}, {"container"}},
        {Op::Update, "update", {"files"}, {"container"}},
        {Op::Checkpoint, "checkpoint", {"image_path", "leave_running"}, {}},
        {Op::Exec, "exec", {"process"}, {"container", "preserve_fds"}},
        {Op::Create, "create", {"container", "bundle", "join", "trees"}, {"preserve_fds", "annotations"}},
        {Op::Remove, "remove", {}, {"container"}},
        {Op::Signal, "signal", {"signal"}, {}},
        {Op::Resize, "resize", {"rows", "cols"}, {}},
    };
    return table;
}

const OpInfo& info(Op op) {
    for (const auto& i : ops())
        if (i.op == op) return i;
    return ops().front();  // (every Op is in the table)
}

tl::unexpected<Error> bad(const std::string& what) { return fail("shim.sock: " + what, EPROTO); }

Result<int64_t> integer(const json& j, const std::string& key, int64_t lo, int64_t hi) {
    const json& v = j.at(key);
    if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(hi) && int64_t(v.get<uint64_t>()) >= lo)
        return int64_t(v.get<uint64_t>());
    if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi)
        return v.get<int64_t>();
    return bad(key + ": expected an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
}

Result<std::string> text(const json& j, const std::string& key, bool absolute = false) {
    const json& v = j.at(key);
    if (!v.is_string() || v.get<std::string>().empty()) return bad(key + ": expected a string");
    if (absolute && v.get<std::string>()[0] != '/') return bad(key + ": expected an absolute path");
    return v.get<std::string>();
}

Result<bool> flag(const json& j, const std::string& key) {
    if (!j.at(key).is_boolean()) return bad(key + ": expected true or false");
    return j.at(key).get<bool>();
}

}  // namespace

const char* op_name(Op op) { return info(op).name; }

json to_json(const ControlRequest& r) {
    json j = {{"op", op_name(r.op)}};
    const auto& i = info(r.op);
    auto has = [&](const char* k) { return i.required.count(k) || i.optional.count(k); };
    if (has("container") && !r.container.empty()) j["container"] = r.container;
    if (has("signal")) j["signal"] = r.signal;
    if (has("all")) j["all"] = r.all;
    if (has("files")) {
        j["files"] = json::array();
        for (const auto& [k, v] : r.files) j["files"].push_back({k, v});
    }
    if (has("image_path")) j["image_path"] = r.image_path;
    if (has("leave_running")) j["leave_running"] = r.leave_running;
    if (has("process")) j["process"] = to_json(r.process);
    if (has("preserve_fds") && r.preserve_fds) j["preserve_fds"] = r.preserve_fds;
    if (has("bundle")) j["bundle"] = r.bundle;
    if (has("join")) j["join"] = r.join;
    if (has("trees")) j["trees"] = r.trees;
    if (has("annotations") && !r.annotations.empty()) j["annotations"] = r.annotations;
    if (has("rows")) j["rows"] = r.rows;
    if (has("cols")) j["cols"] = r.cols;
    return j;
}

Result<ControlRequest> control_request_from_json(const json& j) {
    if (!j.is_object()) return bad("a request is a JSON object");
    if (!j.contains("op") || !j["op"].is_string()) return bad("no op");
    const OpInfo* i = nullptr;
    for (const auto& o : ops())
        if (j["op"] == o.name) i = &o;
    if (!i) return bad("unknown op " + j["op"].get<std::string>());
    for (const auto& [k, v] : j.items())
        if (k != "op" && !i->required.count(k) && !i->optional.count(k)) return bad(std::string(i->name) + ": unknown key " + k);
    for (const auto& k : i->required)
        if (!j.contains(k)) return bad(std::string(i->name) + ": missing " + k);
    ControlRequest r;
    r.op = i->op;
    if (j.contains("container")) r.container = TRY(text(j, "container"));
    if (j.contains("signal")) r.signal = int(TRY(integer(j, "signal", 0, 64)));  // 0: kill's existence check
    if (j.contains("all")) r.all = TRY(flag(j, "all"));
    if (j.contains("files")) {
        if (!j["files"].is_array()) return bad("files: expected [[file, value], ...]");
        for (const auto& f : j["files"]) {
            if (!f.is_array() || f.size() != 2 || !f[0].is_string() || !f[1].is_string())
                return bad("files: expected [[file, value], ...]");
            r.files.emplace_back(f[0].get<std::string>(), f[1].get<std::string>());
        }
    }
    if (j.contains("image_path")) r.image_path = TRY(text(j, "image_path", true));
    if (j.contains("leave_running")) r.leave_running = TRY(flag(j, "leave_running"));
    if (j.contains("process"))
        if (auto p = get(j["process"], "process", r.process); !p) return bad(p.error().message);
    if (j.contains("preserve_fds")) r.preserve_fds = int(TRY(integer(j, "preserve_fds", 0, kMaxPreservedFds)));
    if (j.contains("bundle")) r.bundle = TRY(text(j, "bundle", true));
    if (j.contains("join")) {
        if (!j["join"].is_object()) return bad("join: expected {type: container}");
        for (const auto& [type, target] : j["join"].items()) {
            if (!target.is_string() || target.get<std::string>().empty()) return bad("join: expected {type: container}");
            r.join[type] = target.get<std::string>();
        }
    }
    if (j.contains("trees")) r.trees = uint32_t(TRY(integer(j, "trees", 0, 64)));
    if (j.contains("annotations")) {
        if (!j["annotations"].is_object()) return bad("annotations: expected {key: value}");
        for (const auto& [k, v] : j["annotations"].items()) {
            if (!v.is_string() || k.empty()) return bad("annotations: expected {key: value}");
            r.annotations[k] = v.get<std::string>();
        }
    }
    if (j.contains("rows")) r.rows = uint16_t(TRY(integer(j, "rows", 0, 65535)));
    if (j.contains("cols")) r.cols = uint16_t(TRY(integer(j, "cols", 0, 65535)));
    return r;
}

json to_json(const ControlReply& r) {
    json j = {{"ok", r.ok}};
    if (!r.ok) {
        j["error"] = r.error;
        if (r.code) j["errno"] = r.code;
    }
    if (r.result) j["result"] = *r.result;
    if (r.pid) j["pid"] = *r.pid;
    if (r.stats) j["stats"] = *r.stats;
    return j;
}

Result<ControlReply> control_reply_from_json(const json& j) {
    if (!j.is_object()) return bad("a reply is a JSON object");
    for (const auto& [k, v] : j.items())
        if (k != "ok" && k != "error" && k != "errno" && k != "result" && k != "pid" && k != "stats")
            return bad("reply: unknown key " + k);
    if (!j.contains("ok") || !j["ok"].is_boolean()) return bad("reply: no ok");
    ControlReply r;
    r.ok = j["ok"].get<bool>();
    if (r.ok == j.contains("error")) return bad(r.ok ? "reply: an error in an ok reply" : "reply: a refusal without an error");
    if (j.contains("error")) {
        if (!j["error"].is_string()) return bad("reply: error: expected a string");
        r.error = j["error"].get<std::string>();
    }
    if (j.contains("errno")) {
        if (r.ok) return bad("reply: errno in an ok reply");
        r.code = int(TRY(integer(j, "errno", 1, 4095)));
    }
    if (j.contains("result")) r.result = j["result"];
    if (j.contains("pid")) r.pid = TRY(integer(j, "pid", 0, INT32_MAX));
    if (j.contains("stats")) {
        if (!j["stats"].is_object()) return bad("reply: stats: expected an object");
        r.stats = j["stats"];
    }
    return r;
}

ControlReply refused(const std::string& why, int code) {
    ControlReply r;
    r.ok = false;
    r.error = why;
    r.code = code;
    return r;
}

json to_json(const SessionExit& e) {
    json x = json::object();
    if (e.signal) x["signal"] = *e.signal;
    else x["code"] = e.code.value_or(255);
    return {{"exit", x}};
}

Result<SessionExit> session_exit_from_json(const json& j) {
    if (!j.is_object() || j.size() != 1 || !j.contains("exit") || !j["exit"].is_object() || j["exit"].size() != 1)
        return bad("session: expected {\"exit\": {\"code\"|\"signal\": N}}");
    SessionExit e;
    if (j["exit"].contains("code")) e.code = int(TRY(integer(j["exit"], "code", 0, 255)));
    else if (j["exit"].contains("signal")) e.signal = int(TRY(integer(j["exit"], "signal", 1, 64)));
    else return bad("session: expected {\"exit\": {\"code\"|\"signal\": N}}");
    return e;
}

}  // namespace husk::proto
