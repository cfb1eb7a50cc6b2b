#include "husk/spec.h"

#include <algorithm>

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

bool absolute(const std::string& s) { return !s.empty() && s[0] == '/'; }

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
    if (!absolute(p.cwd)) return r.err(sub("cwd"), "must be an absolute path, got \"" + p.cwd + "\"");
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
    return p;
}

}  // namespace

bool SpecMount::is_bind() const {
    if (type == "bind") return true;
    return std::any_of(options.begin(), options.end(), [](auto& o) { return o == "bind" || o == "rbind"; });
}

bool Spec::has_namespace(const std::string& t) const {
    return std::any_of(namespaces.begin(), namespaces.end(), [&](auto& n) { return n.type == t; });
}

Result<Spec> parse_spec(const std::string& text) {
    json doc = json::parse(text, nullptr, false);
    if (doc.is_discarded()) return fail("config.json: not valid JSON", EINVAL);
    Reader r;
    if (!doc.is_object()) return r.err("$", std::string("expected object, got ") + kind(doc));
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

    if (auto mounts = TRY(r.field(doc, "", "mounts", vt::array, false))) {
        for (size_t i = 0; i < mounts->size(); ++i) {
            std::string mp = Reader::index("mounts", i);
            const json& m = (*mounts)[i];
            if (!m.is_object()) return r.err(mp, std::string("expected object, got ") + kind(m));
            SpecMount sm;
            sm.destination = TRY(r.field(m, mp, "destination", vt::string, true))->get<std::string>();
            if (!absolute(sm.destination))
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
                    if (!sn.path.empty() && !absolute(sn.path))
                        return r.err(np + ".path", "must be an absolute path, got \"" + sn.path + "\"");
                }
                s.namespaces.push_back(sn);
            }
        }
        if (auto res = TRY(r.field(*linux, "linux", "resources", vt::object, false))) {
            if (auto mem = TRY(r.field(*res, "linux.resources", "memory", vt::object, false))) {
                if (auto lim = TRY(r.field(*mem, "linux.resources.memory", "limit", vt::number_integer, false))) {
                    int64_t v = lim->get<int64_t>();
                    if (v > 0) s.memory_limit = v;
                    else if (v != -1 && v != 0)
                        return r.err("linux.resources.memory.limit", "must be positive (or -1 for unlimited)");
                }
            }
            if (auto cpu = TRY(r.field(*res, "linux.resources", "cpu", vt::object, false))) {
                if (auto q = TRY(r.field(*cpu, "linux.resources.cpu", "quota", vt::number_integer, false)))
                    s.cpu_quota = q->get<int64_t>();
                if (auto p = TRY(r.field(*cpu, "linux.resources.cpu", "period", vt::number_unsigned, false)))
                    s.cpu_period = p->get<uint64_t>();
                if (auto c = TRY(r.field(*cpu, "linux.resources.cpu", "cpus", vt::string, false)))
                    s.cpuset_cpus = c->get<std::string>();
            }
        }
        if (auto m = TRY(r.field(*linux, "linux", "maskedPaths", vt::array, false)))
            s.masked_paths = TRY(r.strings(*m, "linux.maskedPaths"));
        if (auto m = TRY(r.field(*linux, "linux", "readonlyPaths", vt::array, false)))
            s.readonly_paths = TRY(r.strings(*m, "linux.readonlyPaths"));
    }
    s.raw = std::move(doc);
    return s;
}

Result<SpecProcess> parse_process_file(const std::string& text, const std::string& file) {
    json doc = json::parse(text, nullptr, false);
    Reader r;
    r.file = file;
    if (doc.is_discarded()) return fail(file + ": not valid JSON", EINVAL);
    if (!doc.is_object()) return r.err("$", std::string("expected object, got ") + kind(doc));
    return parse_process(r, doc, "");
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

std::string rootfs_path(const std::string& bundle, const Spec& spec) {
    if (!spec.root_path.empty() && spec.root_path[0] == '/') return spec.root_path;
    return bundle + "/" + spec.root_path;
}

json default_spec() {
    // Same shape as `runc spec`, so tools and people find what they expect.
    return json::parse(R"({
  "ociVersion": "1.0.2-dev",
  "process": {
    "terminal": true,
    "user": {"uid": 0, "gid": 0},
    "args": ["sh"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "runc",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
  ],
  "linux": {
    "resources": {"devices": [{"allow": false, "access": "rwm"}]},
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}],
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
})");
}

}  // namespace husk
