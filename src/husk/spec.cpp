// config.json as husk reads it: one Reader and one pass over the document,
// each field checked with its JSON path as it is taken. Over 500 lines on
// purpose: the checks of one parse read best beside each other.
#include "husk/spec.h"

#include <sys/resource.h>

#include <algorithm>

#include "protocol/agent.h"
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

namespace {

const char* kind(const json& j) {
    switch (j.type()) {
        case json::value_t::null: return "null";
        case json::value_t::boolean: return "boolean";
        case json::value_t::string: return "string";
        case json::value_t::number_integer:
        case json::value_t::number_unsigned: return "integer";
        case json::value_t::number_float: return "number";
        case json::value_t::object: return "object";
        case json::value_t::array: return "array";
        default: return "value";
    }
}

// Walks the document keeping the JSON path for error messages.
struct Reader {
    std::string file = "config.json";

    tl::unexpected<Error> err(const std::string& p, const std::string& msg) const {
        return fail(file + ": " + p + ": " + msg, EINVAL);
    }
    static std::string child(const std::string& p, const std::string& key) { return p.empty() ? key : p + "." + key; }
    static std::string index(const std::string& p, size_t i) { return p + "[" + std::to_string(i) + "]"; }

    Result<const json*> field(const json& obj, const std::string& p, const std::string& key, json::value_t want,
                              bool required) const {
        auto it = obj.find(key);
        std::string cp = child(p, key);
        if (it == obj.end() || it->is_null()) {
            if (required) return err(cp, "required");
            return nullptr;
        }
        bool ok = it->type() == want ||
                  (want == json::value_t::number_integer && it->is_number_integer()) ||
                  (want == json::value_t::number_unsigned && it->is_number_unsigned());
        if (!ok) {
            std::string w = want == json::value_t::number_unsigned ? "unsigned integer"
                            : want == json::value_t::number_integer ? "integer"
                                                                    : kind(json(want));
            return err(cp, std::string("expected ") + w + ", got " + kind(*it));
        }
        return &*it;
    }

    // The whole file: valid JSON, and an object.
    Result<json> document(const std::string& text) const {
        json doc = json::parse(text, nullptr, false);
        if (doc.is_discarded()) return fail(file + ": not valid JSON", EINVAL);
        if (!doc.is_object()) return err("$", std::string("expected object, got ") + kind(doc));
        return doc;
    }

    // Call fn(element, its path) for each element of an array of objects.
    template <typename F>
    Result<void> each_object(const json& arr, const std::string& p, F&& fn) const {
        for (size_t i = 0; i < arr.size(); ++i) {
            std::string ep = index(p, i);
            if (!arr[i].is_object()) return err(ep, std::string("expected object, got ") + kind(arr[i]));
            TRY(fn(arr[i], ep));
        }
        return {};
    }

    Result<std::vector<std::string>> strings(const json& arr, const std::string& p) const {
        std::vector<std::string> out;
        for (size_t i = 0; i < arr.size(); ++i) {
            if (!arr[i].is_string()) return err(index(p, i), std::string("expected string, got ") + kind(arr[i]));
            out.push_back(arr[i].get<std::string>());
        }
        return out;
    }

    Result<uint32_t> u32(const json& obj, const std::string& p, const std::string& key, bool required,
                         uint32_t def = 0) const {
        auto f = TRY(field(obj, p, key, json::value_t::number_integer, required));
        if (!f) return def;
        if (f->is_number_unsigned() && f->get<uint64_t>() <= 0xffffffffu) return uint32_t(f->get<uint64_t>());
        if (f->is_number_integer() && f->get<int64_t>() >= 0 && f->get<int64_t>() <= 0xffffffffll)
            return uint32_t(f->get<int64_t>());
        return err(child(p, key), "out of range for a 32-bit unsigned integer");
    }
};

Result<SpecProcess> parse_process(const Reader& r, const json& proc_obj, const std::string& at) {
    using vt = json::value_t;
    const json* proc = &proc_obj;
    auto sub = [&](const std::string& k) { return Reader::child(at, k); };
    SpecProcess p;
    if (auto t = TRY(r.field(*proc, at, "terminal", vt::boolean, false))) p.terminal = t->get<bool>();
    if (auto cs = TRY(r.field(*proc, at, "consoleSize", vt::object, false))) {
        p.console_height = TRY(r.u32(*cs, sub("consoleSize"), "height", true));
        p.console_width = TRY(r.u32(*cs, sub("consoleSize"), "width", true));
        if (p.console_height > 0xffff || p.console_width > 0xffff)
            return r.err(sub("consoleSize"), "height and width must fit in 16 bits");
    }
    auto args = TRY(r.field(*proc, at, "args", vt::array, true));
    p.args = TRY(r.strings(*args, sub("args")));
    if (p.args.empty()) return r.err(sub("args"), "must not be empty");
    if (auto env = TRY(r.field(*proc, at, "env", vt::array, false))) {
        p.env = TRY(r.strings(*env, sub("env")));
        for (size_t i = 0; i < p.env.size(); ++i)
            if (p.env[i].find('=') == std::string::npos || p.env[i][0] == '=')
                return r.err(Reader::index(sub("env"), i), "expected KEY=VALUE, got \"" + p.env[i] + "\"");
    }
    p.cwd = TRY(r.field(*proc, at, "cwd", vt::string, true))->get<std::string>();
    if (!sys::is_absolute(p.cwd)) return r.err(sub("cwd"), "must be an absolute path, got \"" + p.cwd + "\"");
    if (auto user = TRY(r.field(*proc, at, "user", vt::object, false))) {
        p.user.uid = TRY(r.u32(*user, sub("user"), "uid", false));
        p.user.gid = TRY(r.u32(*user, sub("user"), "gid", false));
        if (user->contains("umask") && !(*user)["umask"].is_null())
            p.user.umask = TRY(r.u32(*user, sub("user"), "umask", false));
        if (auto g = TRY(r.field(*user, sub("user"), "additionalGids", vt::array, false))) {
            for (size_t i = 0; i < g->size(); ++i) {
                const json& v = (*g)[i];
                if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 0xffffffffll)
                    return r.err(Reader::index(sub("user.additionalGids"), i),
                                 std::string("expected 32-bit unsigned integer, got ") + kind(v));
                p.user.additional_gids.push_back(uint32_t(v.get<int64_t>()));
            }
        }
    }
    if (auto nnp = TRY(r.field(*proc, at, "noNewPrivileges", vt::boolean, false)))
        p.no_new_privileges = nnp->get<bool>();
    if (auto caps = TRY(r.field(*proc, at, "capabilities", vt::object, false))) {
        std::map<std::string, std::vector<std::string>> sets;
        for (const char* set : {"bounding", "effective", "permitted", "inheritable", "ambient"}) {
            std::string cp = Reader::child(sub("capabilities"), set);
            if (auto arr = TRY(r.field(*caps, sub("capabilities"), set, vt::array, false)))
                sets[set] = TRY(r.strings(*arr, cp));
            else
                sets[set] = {};
        }
        p.capabilities = std::move(sets);
    }
    if (auto rl = TRY(r.field(*proc, at, "rlimits", vt::array, false))) {
        TRY(r.each_object(*rl, sub("rlimits"), [&](const json& o, const std::string& rp) -> Result<void> {
            SpecRlimit l;
            l.type = TRY(r.field(o, rp, "type", vt::string, true))->get<std::string>();
            if (rlimit_resource(l.type) < 0) return r.err(rp + ".type", "unknown rlimit \"" + l.type + "\"");
            l.soft = TRY(r.field(o, rp, "soft", vt::number_unsigned, true))->get<uint64_t>();
            l.hard = TRY(r.field(o, rp, "hard", vt::number_unsigned, true))->get<uint64_t>();
            if (l.soft > l.hard) return r.err(rp, "soft limit above hard limit");
            for (const auto& prev : p.rlimits)
                if (prev.type == l.type) return r.err(rp + ".type", "duplicate rlimit \"" + l.type + "\"");
            p.rlimits.push_back(l);
            return {};
        }));
    }
    if (auto o = TRY(r.field(*proc, at, "oomScoreAdj", vt::number_integer, false))) {
        int64_t v = o->get<int64_t>();
        if (v < -1000 || v > 1000) return r.err(sub("oomScoreAdj"), "must be between -1000 and 1000");
        p.oom_score_adj = int(v);
    }
    return p;
}

// linux.seccomp: the shape is checked here, on the host, so a bad profile
// fails `create` with its JSON path; names of syscalls and actions are
// resolved by libseccomp in the guest.
Result<void> check_seccomp(const Reader& r, const json& sec) {
    using vt = json::value_t;
    const std::string at = "linux.seccomp";
    auto action = [&](const json& o, const std::string& p, bool required) -> Result<void> {
        auto a = TRY(r.field(o, p, required ? "action" : "defaultAction", vt::string, true));
        const auto& known = proto::seccomp_actions();
        std::string v = a->get<std::string>();
        if (std::find(known.begin(), known.end(), v) == known.end())
            return r.err(Reader::child(p, required ? "action" : "defaultAction"),
                         "unsupported action \"" + v + "\"" + (v == "SCMP_ACT_NOTIFY" ? " (no notify agent in the guest)" : ""));
        return {};
    };
    TRY(action(sec, at, false));
    TRY(r.field(sec, at, "defaultErrnoRet", vt::number_unsigned, false));
    if (auto a = TRY(r.field(sec, at, "architectures", vt::array, false))) TRY(r.strings(*a, at + ".architectures"));
    if (auto f = TRY(r.field(sec, at, "flags", vt::array, false))) TRY(r.strings(*f, at + ".flags"));
    if (sec.contains("listenerPath") && !sec["listenerPath"].is_null())
        return r.err(at + ".listenerPath", "seccomp notify is not supported");
    auto arg = [&](const json& a, const std::string& ap) -> Result<void> {
        auto idx = TRY(r.field(a, ap, "index", vt::number_unsigned, true));
        if (idx->get<uint64_t>() > 5) return r.err(ap + ".index", "must be 0 to 5");
        TRY(r.field(a, ap, "value", vt::number_unsigned, true));
        TRY(r.field(a, ap, "valueTwo", vt::number_unsigned, false));
        auto op = TRY(r.field(a, ap, "op", vt::string, true))->get<std::string>();
        const auto& ops = proto::seccomp_operators();
        if (std::find(ops.begin(), ops.end(), op) == ops.end())
            return r.err(ap + ".op", "unknown operator \"" + op + "\"");
        return {};
    };
    auto rule = [&](const json& o, const std::string& p) -> Result<void> {
        auto names = TRY(r.field(o, p, "names", vt::array, true));
        TRY(r.strings(*names, p + ".names"));
        TRY(action(o, p, true));
        TRY(r.field(o, p, "errnoRet", vt::number_unsigned, false));
        if (auto args = TRY(r.field(o, p, "args", vt::array, false))) TRY(r.each_object(*args, p + ".args", arg));
        return {};
    };
    if (auto sc = TRY(r.field(sec, at, "syscalls", vt::array, false))) TRY(r.each_object(*sc, at + ".syscalls", rule));
    return {};
}

// linux.resources (or `update --resources`): every field's type, with its
// JSON path. The values are turned into cgroup v2 files in cgroups.cpp.
Result<void> check_resources(const Reader& r, const json& res, const std::string& at) {
    using vt = json::value_t;
    struct F {
        const char* section;
        const char* key;
        vt type;
    };
    static const F fields[] = {
        {"memory", "limit", vt::number_integer},        {"memory", "reservation", vt::number_integer},
        {"memory", "swap", vt::number_integer},         {"memory", "kernel", vt::number_integer},
        {"memory", "kernelTCP", vt::number_integer},    {"memory", "swappiness", vt::number_unsigned},
        {"memory", "disableOOMKiller", vt::boolean},    {"memory", "useHierarchy", vt::boolean},
        {"memory", "checkBeforeUpdate", vt::boolean},   {"cpu", "shares", vt::number_unsigned},
        {"cpu", "quota", vt::number_integer},           {"cpu", "burst", vt::number_unsigned},
        {"cpu", "period", vt::number_unsigned},         {"cpu", "realtimeRuntime", vt::number_integer},
        {"cpu", "realtimePeriod", vt::number_unsigned}, {"cpu", "cpus", vt::string},
        {"cpu", "mems", vt::string},                    {"cpu", "idle", vt::number_integer},
        {"pids", "limit", vt::number_integer},          {"blockIO", "weight", vt::number_unsigned},
        {"blockIO", "leafWeight", vt::number_unsigned},
    };
    for (const char* section : {"memory", "cpu", "pids", "blockIO", "network", "rdma", "unified"}) {
        auto sec = TRY(r.field(res, at, section, vt::object, false));
        if (!sec) continue;
        std::string sp = Reader::child(at, section);
        for (const auto& f : fields)
            if (std::string(f.section) == section) TRY(r.field(*sec, sp, f.key, f.type, false));
        if (std::string(section) == "unified")
            for (auto& [k, v] : sec->items()) {
                if (!v.is_string()) return r.err(Reader::child(sp, k), std::string("expected string, got ") + kind(v));
                if (k.empty() || k.find('/') != std::string::npos || k[0] == '.')
                    return r.err(sp, "invalid cgroup file name \"" + k + "\"");
            }
        if (std::string(section) == "blockIO")
            for (const char* list : {"weightDevice", "throttleReadBpsDevice", "throttleWriteBpsDevice",
                                     "throttleReadIOPSDevice", "throttleWriteIOPSDevice"})
                if (auto a = TRY(r.field(*sec, sp, list, vt::array, false)))
                    TRY(r.each_object(*a, Reader::child(sp, list), [&](const json& o, const std::string& op) -> Result<void> {
                        TRY(r.field(o, op, "major", vt::number_integer, true));
                        TRY(r.field(o, op, "minor", vt::number_integer, true));
                        return {};
                    }));
    }
    if (auto m = res.find("memory"); m != res.end() && m->is_object())
        if (auto lim = m->find("limit"); lim != m->end() && lim->is_number_integer() && lim->get<int64_t>() < -1)
            return r.err(Reader::child(at, "memory.limit"), "must be positive (or -1 for unlimited)");
    if (auto h = TRY(r.field(res, at, "hugepageLimits", vt::array, false)))
        TRY(r.each_object(*h, Reader::child(at, "hugepageLimits"), [&](const json& o, const std::string& hp) -> Result<void> {
            TRY(r.field(o, hp, "pageSize", vt::string, true));
            TRY(r.field(o, hp, "limit", vt::number_unsigned, true));
            return {};
        }));
    if (auto d = TRY(r.field(res, at, "devices", vt::array, false)))
        TRY(r.each_object(*d, Reader::child(at, "devices"), [&](const json& o, const std::string& dp) -> Result<void> {
            TRY(r.field(o, dp, "allow", vt::boolean, true));
            if (auto t = TRY(r.field(o, dp, "type", vt::string, false))) {
                std::string v = t->get<std::string>();
                if (v != "a" && v != "b" && v != "c") return r.err(dp + ".type", "must be \"a\", \"b\" or \"c\", got \"" + v + "\"");
            }
            TRY(r.field(o, dp, "major", vt::number_integer, false));
            TRY(r.field(o, dp, "minor", vt::number_integer, false));
            if (auto a = TRY(r.field(o, dp, "access", vt::string, false))) {
                std::string v = a->get<std::string>();
                if (v.find_first_not_of("rwm") != std::string::npos)
                    return r.err(dp + ".access", "must be made of r, w and m, got \"" + v + "\"");
            }
            return {};
        }));
    return {};
}

// linux.devices: nodes the guest creates in the container's /dev.
Result<std::vector<SpecDevice>> read_devices(const Reader& r, const json& arr) {
    using vt = json::value_t;
    std::vector<SpecDevice> out;
    TRY(r.each_object(arr, "linux.devices", [&](const json& o, const std::string& dp) -> Result<void> {
        SpecDevice d;
        d.path = TRY(r.field(o, dp, "path", vt::string, true))->get<std::string>();
        if (!sys::is_absolute(d.path) || d.path.find("/../") != std::string::npos || d.path.size() < 3 ||
            d.path.substr(d.path.size() - 3) == "/..")
            return r.err(dp + ".path", "must be an absolute path without \"..\", got \"" + d.path + "\"");
        d.type = TRY(r.field(o, dp, "type", vt::string, true))->get<std::string>();
        if (d.type != "c" && d.type != "b" && d.type != "u" && d.type != "p")
            return r.err(dp + ".type", "must be \"c\", \"b\", \"u\" or \"p\", got \"" + d.type + "\"");
        if (d.type != "p") {
            d.major = TRY(r.field(o, dp, "major", vt::number_integer, true))->get<int64_t>();
            d.minor = TRY(r.field(o, dp, "minor", vt::number_integer, true))->get<int64_t>();
            if (d.major < 0 || d.minor < 0) return r.err(dp, "major and minor must not be negative");
        }
        if (auto m = TRY(r.field(o, dp, "fileMode", vt::number_unsigned, false))) d.file_mode = uint32_t(m->get<uint64_t>() & 07777);
        d.uid = TRY(r.u32(o, dp, "uid", false));
        d.gid = TRY(r.u32(o, dp, "gid", false));
        out.push_back(d);
        return {};
    }));
    return out;
}

Result<SpecHooks> read_hooks(const Reader& r, const json& h) {
    using vt = json::value_t;
    SpecHooks out;
    for (const char* stage : {"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"}) {
        auto arr = TRY(r.field(h, "hooks", stage, vt::array, false));
        if (!arr) continue;
        std::string sp = Reader::child("hooks", stage);
        TRY(r.each_object(*arr, sp, [&](const json& o, const std::string& p) -> Result<void> {
            SpecHook hk;
            hk.path = TRY(r.field(o, p, "path", vt::string, true))->get<std::string>();
            if (!sys::is_absolute(hk.path)) return r.err(p + ".path", "must be an absolute path, got \"" + hk.path + "\"");
            if (auto a = TRY(r.field(o, p, "args", vt::array, false))) hk.args = TRY(r.strings(*a, p + ".args"));
            if (auto e = TRY(r.field(o, p, "env", vt::array, false))) hk.env = TRY(r.strings(*e, p + ".env"));
            if (auto t = TRY(r.field(o, p, "timeout", vt::number_integer, false))) {
                if (t->get<int64_t>() <= 0 || t->get<int64_t>() > 86400) return r.err(p + ".timeout", "must be between 1 and 86400 seconds");
                hk.timeout = int(t->get<int64_t>());
            }
            out[stage].push_back(std::move(hk));
            return {};
        }));
    }
    return out;
}

}  // namespace

Result<SpecHooks> parse_hooks(const json& hooks) {
    if (hooks.is_null()) return SpecHooks{};
    Reader r;
    if (!hooks.is_object()) return r.err("hooks", std::string("expected object, got ") + kind(hooks));
    return read_hooks(r, hooks);
}

int rlimit_resource(const std::string& name) {
    static const std::map<std::string, int> table = {
        {"RLIMIT_CPU", RLIMIT_CPU},         {"RLIMIT_FSIZE", RLIMIT_FSIZE},       {"RLIMIT_DATA", RLIMIT_DATA},
        {"RLIMIT_STACK", RLIMIT_STACK},     {"RLIMIT_CORE", RLIMIT_CORE},         {"RLIMIT_RSS", RLIMIT_RSS},
        {"RLIMIT_NPROC", RLIMIT_NPROC},     {"RLIMIT_NOFILE", RLIMIT_NOFILE},     {"RLIMIT_MEMLOCK", RLIMIT_MEMLOCK},
        {"RLIMIT_AS", RLIMIT_AS},           {"RLIMIT_LOCKS", RLIMIT_LOCKS},       {"RLIMIT_SIGPENDING", RLIMIT_SIGPENDING},
        {"RLIMIT_MSGQUEUE", RLIMIT_MSGQUEUE}, {"RLIMIT_NICE", RLIMIT_NICE},       {"RLIMIT_RTPRIO", RLIMIT_RTPRIO},
        {"RLIMIT_RTTIME", RLIMIT_RTTIME},
    };
    auto it = table.find(name);
    return it == table.end() ? -1 : it->second;
}

bool SpecMount::is_bind() const {
    if (type == "bind") return true;
    return std::any_of(options.begin(), options.end(), [](auto& o) { return o == "bind" || o == "rbind"; });
}

bool Spec::has_namespace(const std::string& t) const {
    return std::any_of(namespaces.begin(), namespaces.end(), [&](auto& n) { return n.type == t; });
}

Result<Spec> parse_spec(const std::string& text) {
    Reader r;
    json doc = TRY(r.document(text));
    Spec s;
    using vt = json::value_t;

    auto ver = TRY(r.field(doc, "", "ociVersion", vt::string, true));
    s.oci_version = ver->get<std::string>();
    if (s.oci_version.empty() || s.oci_version[0] != '1') return r.err("ociVersion", "unsupported version \"" + s.oci_version + "\" (need 1.x)");

    auto root = TRY(r.field(doc, "", "root", vt::object, true));
    s.root_path = TRY(r.field(*root, "root", "path", vt::string, true))->get<std::string>();
    if (s.root_path.empty()) return r.err("root.path", "must not be empty");
    if (auto ro = TRY(r.field(*root, "root", "readonly", vt::boolean, false))) s.root_readonly = ro->get<bool>();

    if (auto proc = TRY(r.field(doc, "", "process", vt::object, false))) s.process = TRY(parse_process(r, *proc, "process"));

    if (auto h = TRY(r.field(doc, "", "hostname", vt::string, false))) s.hostname = h->get<std::string>();
    if (auto h = TRY(r.field(doc, "", "hooks", vt::object, false))) s.hooks = TRY(read_hooks(r, *h));

    if (auto mounts = TRY(r.field(doc, "", "mounts", vt::array, false))) {
        for (size_t i = 0; i < mounts->size(); ++i) {
            std::string mp = Reader::index("mounts", i);
            const json& m = (*mounts)[i];
            if (!m.is_object()) return r.err(mp, std::string("expected object, got ") + kind(m));
            SpecMount sm;
            sm.destination = TRY(r.field(m, mp, "destination", vt::string, true))->get<std::string>();
            if (!sys::is_absolute(sm.destination))
                return r.err(mp + ".destination", "must be an absolute path, got \"" + sm.destination + "\"");
            if (auto t = TRY(r.field(m, mp, "type", vt::string, false))) sm.type = t->get<std::string>();
            if (auto src = TRY(r.field(m, mp, "source", vt::string, false))) sm.source = src->get<std::string>();
            if (auto o = TRY(r.field(m, mp, "options", vt::array, false))) sm.options = TRY(r.strings(*o, mp + ".options"));
            if (sm.is_bind() && sm.source.empty()) return r.err(mp + ".source", "required for a bind mount");
            s.mounts.push_back(std::move(sm));
        }
    }

    if (auto ann = TRY(r.field(doc, "", "annotations", vt::object, false))) {
        for (auto& [k, v] : ann->items()) {
            if (!v.is_string()) return r.err("annotations." + k, std::string("expected string, got ") + kind(v));
            s.annotations[k] = v.get<std::string>();
        }
    }

    if (auto linux = TRY(r.field(doc, "", "linux", vt::object, false))) {
        if (auto ns = TRY(r.field(*linux, "linux", "namespaces", vt::array, false))) {
            static const char* known[] = {"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"};
            for (size_t i = 0; i < ns->size(); ++i) {
                std::string np = Reader::index("linux.namespaces", i);
                const json& n = (*ns)[i];
                if (!n.is_object()) return r.err(np, std::string("expected object, got ") + kind(n));
                SpecNamespace sn;
                sn.type = TRY(r.field(n, np, "type", vt::string, true))->get<std::string>();
                if (std::none_of(std::begin(known), std::end(known), [&](auto k) { return sn.type == k; }))
                    return r.err(np + ".type", "unknown namespace type \"" + sn.type + "\"");
                if (auto p = TRY(r.field(n, np, "path", vt::string, false))) {
                    sn.path = p->get<std::string>();
                    if (!sn.path.empty() && !sys::is_absolute(sn.path))
                        return r.err(np + ".path", "must be an absolute path, got \"" + sn.path + "\"");
                }
                s.namespaces.push_back(sn);
            }
        }
        if (auto res = TRY(r.field(*linux, "linux", "resources", vt::object, false))) {
            TRY(check_resources(r, *res, "linux.resources"));
            s.resources = *res;
            const json none = json::object();
            const json& mem = res->contains("memory") ? (*res)["memory"] : none;
            if (int64_t v = mem.value("limit", int64_t(0)); v > 0) s.memory_limit = v;
            const json& cpu = res->contains("cpu") ? (*res)["cpu"] : none;
            if (cpu.contains("quota")) s.cpu_quota = cpu["quota"].get<int64_t>();
            if (cpu.contains("period")) s.cpu_period = cpu["period"].get<uint64_t>();
            s.cpuset_cpus = cpu.value("cpus", "");
        }
        if (auto d = TRY(r.field(*linux, "linux", "devices", vt::array, false))) s.devices = TRY(read_devices(r, *d));
        if (auto c = TRY(r.field(*linux, "linux", "cgroupsPath", vt::string, false))) s.cgroups_path = c->get<std::string>();
        for (auto km : {std::pair{"uidMappings", &s.uid_mappings}, std::pair{"gidMappings", &s.gid_mappings}}) {
            const char* key = km.first;
            auto* out = km.second;  // not a structured binding: clang 14 cannot capture one
            auto a = TRY(r.field(*linux, "linux", key, vt::array, false));
            if (!a) continue;
            std::string ap = Reader::child("linux", key);
            TRY(r.each_object(*a, ap, [&](const json& o, const std::string& mp) -> Result<void> {
                SpecIdMap m{TRY(r.u32(o, mp, "containerID", true)), TRY(r.u32(o, mp, "hostID", true)), TRY(r.u32(o, mp, "size", true))};
                if (m.size == 0) return r.err(mp + ".size", "must not be 0");
                out->push_back(m);
                return {};
            }));
        }
        // Namespace paths: the network one is where the shim and VMM run,
        // and its links become the VM's NICs; the others join a pod's VM
        // (husk/pod.h decides, and refuses those it cannot map).
        bool userns = s.has_namespace("user");
        for (auto [key, maps] : {std::pair{"uidMappings", &s.uid_mappings}, std::pair{"gidMappings", &s.gid_mappings}}) {
            std::string ap = Reader::child("linux", key);
            if (!userns && !maps->empty()) return r.err(ap, "given, but linux.namespaces has no user namespace");
            if (userns && maps->empty()) return r.err(ap, "required with a user namespace");
            if (userns && std::none_of(maps->begin(), maps->end(), [](auto& m) { return m.container_id == 0; }))
                return r.err(ap, "must map the container's id 0 (husk builds the container as its root)");
            if (maps->size() > 340) return r.err(ap, "at most 340 ranges");
        }
        if (auto m = TRY(r.field(*linux, "linux", "maskedPaths", vt::array, false)))
            s.masked_paths = TRY(r.strings(*m, "linux.maskedPaths"));
        if (auto m = TRY(r.field(*linux, "linux", "readonlyPaths", vt::array, false)))
            s.readonly_paths = TRY(r.strings(*m, "linux.readonlyPaths"));
        if (auto sc = TRY(r.field(*linux, "linux", "sysctl", vt::object, false))) {
            for (auto& [k, v] : sc->items()) {
                if (!v.is_string()) return r.err("linux.sysctl." + k, std::string("expected string, got ") + kind(v));
                if (k.empty() || k.find("..") != std::string::npos || k[0] == '.' || k[0] == '/')
                    return r.err("linux.sysctl", "invalid name \"" + k + "\"");
                s.sysctl[k] = v.get<std::string>();
            }
        }
        if (auto sec = TRY(r.field(*linux, "linux", "seccomp", vt::object, false))) {
            TRY(check_seccomp(r, *sec));
            s.seccomp = *sec;
        }
    }
    s.raw = std::move(doc);
    return s;
}

Result<SpecProcess> parse_process_file(const std::string& text, const std::string& file) {
    Reader r;
    r.file = file;
    json doc = TRY(r.document(text));
    return parse_process(r, doc, "");
}

Result<json> parse_resources_file(const std::string& text, const std::string& file) {
    Reader r;
    r.file = file;
    json doc = TRY(r.document(text));
    TRY(check_resources(r, doc, ""));
    return doc;
}

Result<Spec> load_spec(const std::string& bundle) {
    std::string path = bundle + "/config.json";
    auto text = sys::read_file(path, 8 << 20);
    if (!text) {
        if (text.error().code == ENOENT) return fail("bundle " + bundle + ": config.json not found", ENOENT);
        return tl::unexpected(text.error());
    }
    return parse_spec(*text);
}

Result<std::map<std::string, std::string>> parse_annotation_args(const std::vector<std::string>& args) {
    std::map<std::string, std::string> out;
    for (const auto& kv : args) {
        size_t eq = kv.find('=');
        if (eq == std::string::npos || eq == 0 || kv.find('\0') != std::string::npos)
            return fail("--annotation " + kv + ": expected KEY=VALUE", EINVAL);
        out[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    return out;
}

void add_annotations(Spec& spec, const std::map<std::string, std::string>& defaults) {
    for (const auto& [k, v] : defaults) spec.annotations.emplace(k, v);
}

std::string rootfs_path(const std::string& bundle, const Spec& spec) {
    if (!spec.root_path.empty() && spec.root_path[0] == '/') return spec.root_path;
    return bundle + "/" + spec.root_path;
}

}  // namespace husk
