// protocol/agent.h: the strict decoders (decode.h), one per message and
// part of one. A guest's messages to the shim, and the shim's requests as
// the agent reads them, are checked here field by field: type, range,
// paths that could leave their tree.
#include <sys/socket.h>

#include <algorithm>

#include "protocol/agent.h"
#include "protocol/decode.h"
#include "protocol/protocol.h"
#include "sys/sys.h"

namespace husk::proto {

using nlohmann::json;

namespace {

bool one_of(const std::vector<std::string>& set, const std::string& v) {
    return std::find(set.begin(), set.end(), v) != set.end();
}

Result<void> check(bool ok, const std::string& at, const std::string& what) {
    if (!ok) return bad_field(at, what);
    return {};
}

// A relative path with no way out ("", "/x" and ".." refused).
bool contained(const std::string& p) {
    if (p.empty() || p[0] == '/') return false;
    size_t i = 0;
    while (i <= p.size()) {
        size_t j = p.find('/', i);
        if (j == std::string::npos) j = p.size();
        if (p.compare(i, j - i, "..") == 0 && j - i == 2) return false;
        i = j + 1;
    }
    return true;
}

struct Root {
    std::string share;
    bool readonly = false;
};

Result<void> get(const json& v, const std::string& at, Root& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("share", out.share));
    TRY(o.req("readonly", out.readonly));
    return o.end();
}

}  // namespace

Result<void> get(const json& v, const std::string& at, Hello& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("version", out.version));
    TRY(o.opt("template", out.template_boot));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Request& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("id", out.id));
    TRY(o.req("method", out.method));
    TRY(o.req("params", out.params));
    TRY(check(out.params.is_object(), at + ".params", "expected an object"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Response& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("id", out.id));
    TRY(o.req("ok", out.ok));
    if (out.ok) TRY(o.opt("result", out.result));
    else TRY(o.req("error", out.error));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, ExitEvent& out) {
    auto o = TRY(Object::of(v, at));
    std::string event;
    TRY(o.req("event", event));
    TRY(check(event == "exit", at + ".event", "not an event husk knows: " + event));
    TRY(o.req("process", out.process));
    TRY(o.opt("code", out.code));
    TRY(o.opt("signal", out.signal));
    TRY(check(out.code.has_value() != out.signal.has_value(), at, "expected a code or a signal"));
    TRY(check(!out.code || (*out.code >= 0 && *out.code <= 255), at + ".code", "expected 0..255"));
    TRY(check(!out.signal || (*out.signal >= 1 && *out.signal <= 64), at + ".signal", "expected 1..64"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Rlimit& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("resource", out.resource));
    TRY(o.req("soft", out.soft));
    TRY(o.req("hard", out.hard));
    TRY(check(out.resource >= 0 && out.resource < 16, at + ".resource", "not an RLIMIT_* number"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, ConsoleSize& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("rows", out.rows));
    TRY(o.req("cols", out.cols));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Process& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("args", out.args));
    TRY(o.req("env", out.env));
    TRY(o.req("cwd", out.cwd));
    TRY(o.req("uid", out.uid));
    TRY(o.req("gid", out.gid));
    TRY(o.req("additional_gids", out.additional_gids));
    TRY(o.req("terminal", out.terminal));
    TRY(o.req("no_new_privileges", out.no_new_privileges));
    TRY(o.opt("umask", out.umask));
    TRY(o.opt("console_size", out.console_size));
    TRY(o.opt("capabilities", out.capabilities));
    TRY(o.opt("rlimits", out.rlimits));
    TRY(o.opt("oom_score_adj", out.oom_score_adj));
    TRY(o.opt("extra_fds", out.extra_fds));
    TRY(check(!out.args.empty() && !out.args[0].empty(), at + ".args", "expected a program"));
    TRY(check(sys::is_absolute(out.cwd), at + ".cwd", "expected an absolute path"));
    TRY(check(!out.umask || *out.umask <= 0777, at + ".umask", "expected 0..0777"));
    TRY(check(!out.oom_score_adj || (*out.oom_score_adj >= -1000 && *out.oom_score_adj <= 1000), at + ".oom_score_adj",
              "expected -1000..1000"));
    TRY(check(!out.console_size || out.terminal, at + ".console_size", "only for a terminal"));
    if (out.capabilities)
        for (const auto& [set, caps] : *out.capabilities) {
            static const std::vector<std::string> sets = {"bounding", "effective", "permitted", "inheritable", "ambient"};
            TRY(check(one_of(sets, set), at + ".capabilities." + set, "not a capability set"));
            for (int c : caps) TRY(check(c >= 0 && c <= 63, at + ".capabilities." + set, "not a capability number"));
        }
    TRY(check(out.extra_fds.size() <= size_t(kMaxPreservedFds), at + ".extra_fds", "too many"));
    for (const auto& f : out.extra_fds) TRY(check(flow_of_name(f).has_value(), at + ".extra_fds", "not a flow: " + f));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Mount& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("destination", out.destination));
    TRY(o.req("type", out.type));
    TRY(o.req("options", out.options));
    TRY(check(sys::is_absolute(out.destination), at + ".destination", "expected an absolute path"));
    if (o.has("share")) {
        TRY(o.req("share", out.share));
        TRY(o.opt("submounts", out.submounts));
        TRY(check(!out.share->empty() && out.share->find("..") == std::string::npos, at + ".share", "not a share entry"));
        for (const auto& s : out.submounts) TRY(check(contained(s), at + ".submounts", "not a relative path: " + s));
    } else {
        TRY(o.req("source", out.source));
    }
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Device& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("path", out.path));
    TRY(o.req("type", out.type));
    TRY(o.req("major", out.major));
    TRY(o.req("minor", out.minor));
    TRY(o.req("uid", out.uid));
    TRY(o.req("gid", out.gid));
    TRY(o.opt("file_mode", out.file_mode));
    TRY(check(sys::is_absolute(out.path), at + ".path", "expected an absolute path"));
    TRY(check(out.type == "c" || out.type == "b" || out.type == "u" || out.type == "p", at + ".type", "expected c, b, u or p"));
    TRY(check(out.major >= 0 && out.major <= 0xfff && out.minor >= 0 && out.minor <= 0xfffff, at, "major or minor out of range"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, DeviceRule& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("allow", out.allow));
    TRY(o.req("type", out.type));
    TRY(o.req("major", out.major));
    TRY(o.req("minor", out.minor));
    TRY(o.req("access", out.access));
    TRY(check(out.type == "a" || out.type == "c" || out.type == "b", at + ".type", "expected a, c or b"));
    TRY(check(out.major >= -1 && out.major <= INT32_MAX && out.minor >= -1 && out.minor <= INT32_MAX, at,
              "major or minor out of range"));
    TRY(check(out.access.find_first_not_of("rwm") == std::string::npos, at + ".access", "expected r, w and m"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Cgroup& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("files", out.files));
    TRY(o.req("devices", out.devices));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, SeccompArg& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("index", out.index));
    TRY(o.req("value", out.value));
    TRY(o.opt("valueTwo", out.value_two));
    TRY(o.req("op", out.op));
    TRY(check(out.index <= 5, at + ".index", "expected 0..5"));
    TRY(check(one_of(seccomp_operators(), out.op), at + ".op", "unknown operator " + out.op));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, SeccompRule& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("names", out.names));
    TRY(o.req("action", out.action));
    TRY(o.opt("errnoRet", out.errno_ret));
    TRY(o.opt("args", out.args));
    TRY(check(one_of(seccomp_actions(), out.action), at + ".action", "unsupported action " + out.action));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Seccomp& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("defaultAction", out.default_action));
    TRY(o.opt("defaultErrnoRet", out.default_errno_ret));
    TRY(o.opt("architectures", out.architectures));
    TRY(o.opt("flags", out.flags));
    TRY(o.opt("syscalls", out.syscalls));
    TRY(check(one_of(seccomp_actions(), out.default_action), at + ".defaultAction", "unsupported action " + out.default_action));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, UserNs& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("uid_map", out.uid_map));
    TRY(o.req("gid_map", out.gid_map));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Create& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("container", out.container));
    TRY(o.req("process_index", out.process_index));
    TRY(o.req("process", out.process));
    Root root;
    TRY(o.req("root", root));
    out.root_share = root.share;
    out.root_readonly = root.readonly;
    TRY(o.req("hostname", out.hostname));
    TRY(o.req("mounts", out.mounts));
    TRY(o.req("namespaces", out.namespaces));
    TRY(o.opt("join", out.join));
    TRY(o.opt("userns", out.userns));
    TRY(o.req("masked_paths", out.masked_paths));
    TRY(o.req("readonly_paths", out.readonly_paths));
    TRY(o.opt("sysctl", out.sysctl));
    TRY(o.opt("seccomp", out.seccomp));
    TRY(o.opt("cgroup", out.cgroup));
    TRY(o.opt("devices", out.devices));
    TRY(o.opt("network", out.network));
    TRY(o.opt("hooks", out.hooks));
    TRY(o.opt("hook_state", out.hook_state));
    TRY(check(!out.container.empty(), at + ".container", "expected a container id"));
    TRY(check(out.process_index <= kMaxProcess, at + ".process_index", "out of range"));
    TRY(check(!out.root_share.empty() && out.root_share.find("..") == std::string::npos, at + ".root.share",
              "not a share entry"));
    static const std::vector<std::string> own = {"pid", "mount", "uts", "ipc", "cgroup", "user"};
    for (const auto& n : out.namespaces) TRY(check(one_of(own, n), at + ".namespaces", "not a namespace husk makes: " + n));
    static const std::vector<std::string> joinable = {"pid", "uts", "ipc", "cgroup"};
    for (const auto& [type, target] : out.join) {
        TRY(check(one_of(joinable, type), at + ".join." + type, "cannot join a " + type + " namespace"));
        TRY(check(!target.empty(), at + ".join." + type, "expected a container id"));
    }
    TRY(check(one_of(out.namespaces, "user") == out.userns.has_value(), at + ".userns", "only with a user namespace"));
    for (const auto& [stage, hs] : out.hooks)
        TRY(check(stage == "createContainer" || stage == "startContainer", at + ".hooks." + stage, "not a guest stage"));
    TRY(check(out.hooks.empty() || (out.hook_state && out.hook_state->is_object()), at + ".hook_state",
              "expected the state hooks read"));
    for (const auto& [k, x] : out.sysctl)
        TRY(check(!k.empty() && k.find('/') == std::string::npos && k.find("..") == std::string::npos,
                  at + ".sysctl." + k, "not a sysctl name"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Exec& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("container", out.container));
    TRY(o.req("process_index", out.process_index));
    TRY(o.req("process", out.process));
    TRY(check(out.process_index > 0 && out.process_index <= kMaxProcess, at + ".process_index", "out of range"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Resume& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("restored", out.restored));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Spawned& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("pid", out.pid));
    TRY(check(out.pid > 0 && out.pid <= INT32_MAX, at + ".pid", "not a pid"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Start& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("process", out.process));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Kill& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("process", out.process));
    TRY(o.req("signal", out.signal));
    TRY(o.req("all", out.all));
    TRY(check(out.signal >= 0 && out.signal <= 64, at + ".signal", "expected 0..64"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Resize& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("process", out.process));
    TRY(o.req("rows", out.rows));
    TRY(o.req("cols", out.cols));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, PsProcess& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("pid", out.pid));
    TRY(check(out.pid > 0 && out.pid <= INT32_MAX, at + ".pid", "not a pid"));
    TRY(o.req("ppid", out.ppid));
    TRY(check(out.ppid >= 0 && out.ppid <= INT32_MAX, at + ".ppid", "not a pid (or 0)"));
    TRY(o.req("uid", out.uid));
    TRY(check(out.uid >= 0 && out.uid <= UINT32_MAX, at + ".uid", "not a uid"));
    TRY(o.req("user", out.user));
    TRY(o.req("state", out.state));
    TRY(o.req("stat", out.stat));
    TRY(o.req("cmd", out.cmd));
    TRY(o.req("comm", out.comm));
    TRY(o.req("tty", out.tty));
    TRY(o.req("start", out.start));
    TRY(o.req("cpu", out.cpu));
    TRY(o.req("pcpu", out.pcpu));
    TRY(o.req("pmem", out.pmem));
    TRY(o.req("vsz", out.vsz));
    TRY(o.req("rss", out.rss));
    for (auto [name, x] : {std::pair{"cpu", out.cpu}, {"pcpu", out.pcpu}, {"pmem", out.pmem}})
        TRY(check(x >= 0 && x < 1e15, at + "." + name, "not a figure"));
    TRY(check(out.vsz >= 0 && out.rss >= 0, at + (out.vsz < 0 ? ".vsz" : ".rss"), "negative"));
    return o.end();
}

Result<void> get(const json& v, const std::string& at, Target& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.opt("container", out.container));
    TRY(o.opt("files", out.files));
    TRY(o.opt("names", out.names));
    TRY(o.opt("frozen", out.frozen));
    TRY(o.opt("vcpus", out.vcpus));
    TRY(check(!out.vcpus || (*out.vcpus >= 1 && *out.vcpus <= 1024), at + ".vcpus", "expected 1..1024"));
    return o.end();
}

}  // namespace husk::proto

namespace husk {

using nlohmann::json;
using proto::bad_field;
using proto::Object;

Result<void> get(const json& v, const std::string& at, SpecHook& out) {
    auto o = TRY(Object::of(v, at));
    TRY(o.req("path", out.path));
    TRY(o.req("args", out.args));
    TRY(o.req("env", out.env));
    TRY(o.req("timeout", out.timeout));
    if (!sys::is_absolute(out.path)) return bad_field(at + ".path", "expected an absolute path");
    if (out.timeout < 0) return bad_field(at + ".timeout", "expected seconds, 0 for none");
    return o.end();
}

}  // namespace husk
