// protocol/agent.h: the encoders (agent_decode.cpp: the strict decoders,
// the side that reads what the other process sent).
#include "protocol/agent.h"

namespace husk::proto {

using nlohmann::json;

const std::vector<std::string>& seccomp_actions() {
    static const std::vector<std::string> a = {"SCMP_ACT_KILL",  "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
                                               "SCMP_ACT_TRAP",  "SCMP_ACT_ERRNO",        "SCMP_ACT_TRACE",
                                               "SCMP_ACT_ALLOW", "SCMP_ACT_LOG"};
    return a;
}

const std::vector<std::string>& seccomp_operators() {
    static const std::vector<std::string> o = {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE",       "SCMP_CMP_EQ",
                                               "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"};
    return o;
}

namespace {

json pairs(const std::vector<std::pair<std::string, std::string>>& v) {
    json out = json::array();
    for (const auto& [a, b] : v) out.push_back({a, b});
    return out;
}

}  // namespace

json to_json(const Hello& h) {
    json j = {{"version", h.version}};
    if (h.template_boot) j["template"] = true;
    return j;
}

json to_json(const Request& r) { return {{"id", r.id}, {"method", r.method}, {"params", r.params}}; }

json to_json(const Response& r) {
    json j = {{"id", r.id}, {"ok", r.ok}};
    if (!r.ok) j["error"] = r.error;
    if (r.result && !r.result->is_null()) j["result"] = *r.result;
    return j;
}

json to_json(const ExitEvent& e) {
    json j = {{"event", "exit"}, {"process", e.process}};
    if (e.signal) j["signal"] = *e.signal;
    else j["code"] = e.code.value_or(255);
    return j;
}

json to_json(const Process& p) {
    json j = {{"args", p.args},       {"env", p.env},
              {"cwd", p.cwd},         {"uid", p.uid},
              {"gid", p.gid},         {"additional_gids", p.additional_gids},
              {"terminal", p.terminal}, {"no_new_privileges", p.no_new_privileges}};
    if (p.umask) j["umask"] = *p.umask;
    if (p.console_size) j["console_size"] = {{"rows", p.console_size->rows}, {"cols", p.console_size->cols}};
    if (p.capabilities) j["capabilities"] = *p.capabilities;
    if (!p.rlimits.empty()) {
        j["rlimits"] = json::array();
        for (const auto& l : p.rlimits) j["rlimits"].push_back({{"resource", l.resource}, {"soft", l.soft}, {"hard", l.hard}});
    }
    if (p.oom_score_adj) j["oom_score_adj"] = *p.oom_score_adj;
    if (!p.extra_fds.empty()) j["extra_fds"] = p.extra_fds;
    return j;
}

json to_json(const DeviceRule& r) {
    return {{"allow", r.allow}, {"type", r.type}, {"major", r.major}, {"minor", r.minor}, {"access", r.access}};
}

json to_json(const Seccomp& s) {
    json j = {{"defaultAction", s.default_action}};
    if (s.default_errno_ret) j["defaultErrnoRet"] = *s.default_errno_ret;
    if (!s.architectures.empty()) j["architectures"] = s.architectures;
    if (!s.flags.empty()) j["flags"] = s.flags;
    if (!s.syscalls.empty()) {
        j["syscalls"] = json::array();
        for (const auto& r : s.syscalls) {
            json jr = {{"names", r.names}, {"action", r.action}};
            if (r.errno_ret) jr["errnoRet"] = *r.errno_ret;
            if (!r.args.empty()) {
                jr["args"] = json::array();
                for (const auto& a : r.args) {
                    json ja = {{"index", a.index}, {"value", a.value}, {"op", a.op}};
                    if (a.value_two) ja["valueTwo"] = a.value_two;
                    jr["args"].push_back(ja);
                }
            }
            j["syscalls"].push_back(jr);
        }
    }
    return j;
}

json to_json(const Create& c) {
    json j = {{"container", c.container},
              {"process_index", c.process_index},
              {"process", to_json(c.process)},
              {"root", {{"share", c.root_share}, {"readonly", c.root_readonly}}},
              {"hostname", c.hostname},
              {"namespaces", c.namespaces},
              {"masked_paths", c.masked_paths},
              {"readonly_paths", c.readonly_paths}};
    json mounts = json::array();
    for (const auto& m : c.mounts) {
        json jm = {{"destination", m.destination}, {"type", m.type}, {"options", m.options}};
        if (m.share) {
            jm["share"] = *m.share;
            if (!m.submounts.empty()) jm["submounts"] = m.submounts;
        } else {
            jm["source"] = m.source;
        }
        mounts.push_back(jm);
    }
    j["mounts"] = mounts;
    if (!c.join.empty()) j["join"] = c.join;
    if (c.userns) j["userns"] = {{"uid_map", c.userns->uid_map}, {"gid_map", c.userns->gid_map}};
    if (!c.sysctl.empty()) j["sysctl"] = c.sysctl;
    if (c.seccomp) j["seccomp"] = to_json(*c.seccomp);
    if (c.cgroup) {
        json rules = json::array();
        for (const auto& r : c.cgroup->devices) rules.push_back(to_json(r));
        j["cgroup"] = {{"files", pairs(c.cgroup->files)}, {"devices", rules}};
    }
    if (!c.devices.empty()) {
        json devs = json::array();
        for (const auto& d : c.devices) {
            json jd = {{"path", d.path}, {"type", d.type}, {"major", d.major}, {"minor", d.minor}, {"uid", d.uid}, {"gid", d.gid}};
            if (d.file_mode) jd["file_mode"] = *d.file_mode;
            devs.push_back(jd);
        }
        j["devices"] = devs;
    }
    if (c.network) j["network"] = interfaces_to_json(*c.network);
    if (!c.hooks.empty()) {
        j["hooks"] = json::object();
        for (const auto& [stage, hs] : c.hooks) {
            j["hooks"][stage] = json::array();
            for (const auto& h : hs) j["hooks"][stage].push_back(husk::to_json(h));
        }
    }
    if (c.hook_state) j["hook_state"] = *c.hook_state;
    return j;
}

json to_json(const Exec& e) {
    return {{"container", e.container}, {"process_index", e.process_index}, {"process", to_json(e.process)}};
}

json to_json(const Resume& r) { return {{"restored", r.restored}}; }

json to_json(const Spawned& s) { return {{"pid", s.pid}}; }

json to_json(const Start& s) { return {{"process", s.process}}; }

json to_json(const Kill& k) { return {{"process", k.process}, {"signal", k.signal}, {"all", k.all}}; }

json to_json(const Resize& r) { return {{"process", r.process}, {"rows", r.rows}, {"cols", r.cols}}; }

json to_json(const PsProcess& p) {
    return {{"pid", p.pid},   {"ppid", p.ppid}, {"uid", p.uid},   {"user", p.user}, {"state", p.state},
            {"stat", p.stat}, {"cmd", p.cmd},   {"comm", p.comm}, {"tty", p.tty},   {"start", p.start},
            {"cpu", p.cpu},   {"pcpu", p.pcpu}, {"pmem", p.pmem}, {"vsz", p.vsz},   {"rss", p.rss}};
}

json to_json(const Target& t) {
    json j = json::object();
    if (!t.container.empty()) j["container"] = t.container;
    if (!t.files.empty()) j["files"] = pairs(t.files);
    if (!t.names.empty()) j["names"] = t.names;
    if (t.frozen) j["frozen"] = *t.frozen;
    if (t.vcpus) j["vcpus"] = *t.vcpus;
    return j;
}

}  // namespace husk::proto

namespace husk {

using nlohmann::json;

json to_json(const SpecHook& h) { return {{"path", h.path}, {"args", h.args}, {"env", h.env}, {"timeout", h.timeout}}; }

}  // namespace husk
