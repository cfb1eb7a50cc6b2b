#include "husk/state.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <ctime>

#include "sys/sys.h"

namespace husk {

using nlohmann::json;

json state_to_json(const State& s) {
    json j = {{"id", s.id},         {"bundle", s.bundle},       {"rootfs", s.rootfs},     {"status", s.status},
              {"created", s.created}, {"owner", s.owner},       {"pid", s.pid},           {"pid_start", s.pid_start},
              {"vmm_pid", s.vmm_pid}, {"vmm_start", s.vmm_start}, {"annotations", s.annotations}};
    if (!s.hooks.is_null()) j["hooks"] = s.hooks;
    if (!s.cgroups.empty()) j["cgroups"] = s.cgroups;
    if (!s.net_links.empty() || !s.net_taps.empty()) j["network"] = {{"netns", s.netns}, {"links", s.net_links}};
    if (!s.net_taps.empty()) j["network"]["taps"] = s.net_taps;
    if (!s.sandbox.empty()) j["sandbox"] = s.sandbox;
    if (s.exit_code) j["exit_code"] = *s.exit_code;
    if (s.exit_signal) j["exit_signal"] = *s.exit_signal;
    return j;
}

// Strict, as every typed contract is: a missing key, an unknown one, a
// wrong type or a number out of range is an error naming the key (never
// a default, never a float cut to an int).
Result<State> state_from_json(const json& j) {
    auto bad = [](const std::string& what) { return fail("corrupt state: " + what, EINVAL); };
    if (!j.is_object()) return bad("not a JSON object");
    static const char* const kRequired[] = {"id",  "bundle",    "rootfs",  "status",    "created",
                                            "owner", "pid", "pid_start", "vmm_pid", "vmm_start", "annotations"};
    static const char* const kOptional[] = {"hooks", "cgroups", "network", "sandbox", "exit_code", "exit_signal"};
    for (const auto& [k, v] : j.items()) {
        bool known = false;
        for (const char* n : kRequired) known |= k == n;
        for (const char* n : kOptional) known |= k == n;
        if (!known) return bad("unknown key " + k);
    }
    for (const char* n : kRequired)
        if (!j.contains(n)) return bad(std::string("missing ") + n);
    auto str = [&](const json& v, const std::string& k) -> Result<std::string> {
        if (!v.is_string()) return bad(k + ": not a string");
        return v.get<std::string>();
    };
    auto strings = [&](const json& v, const std::string& k) -> Result<std::vector<std::string>> {
        if (!v.is_array()) return bad(k + ": not a list of strings");
        std::vector<std::string> out;
        for (const auto& e : v) out.push_back(TRY(str(e, k)));
        return out;
    };
    auto integer = [&](const json& v, const std::string& k, int64_t lo, uint64_t hi) -> Result<int64_t> {
        if (v.is_number_unsigned() && v.get<uint64_t>() <= hi) return int64_t(v.get<uint64_t>());
        if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= lo &&
            (v.get<int64_t>() < 0 || uint64_t(v.get<int64_t>()) <= hi))
            return v.get<int64_t>();
        return bad(k + ": not an integer in range");
    };
    State s;
    s.id = TRY(str(j["id"], "id"));
    s.bundle = TRY(str(j["bundle"], "bundle"));
    s.rootfs = TRY(str(j["rootfs"], "rootfs"));
    s.status = TRY(str(j["status"], "status"));
    s.created = TRY(str(j["created"], "created"));
    s.owner = TRY(str(j["owner"], "owner"));
    s.pid = pid_t(TRY(integer(j["pid"], "pid", 0, INT32_MAX)));
    s.pid_start = uint64_t(TRY(integer(j["pid_start"], "pid_start", 0, INT64_MAX)));
    s.vmm_pid = pid_t(TRY(integer(j["vmm_pid"], "vmm_pid", 0, INT32_MAX)));
    s.vmm_start = uint64_t(TRY(integer(j["vmm_start"], "vmm_start", 0, INT64_MAX)));
    if (!j["annotations"].is_object()) return bad("annotations: not an object");
    for (const auto& [k, v] : j["annotations"].items()) s.annotations[k] = TRY(str(v, "annotations." + k));
    if (j.contains("hooks")) s.hooks = j["hooks"];  // config.json's, parsed again where they run (parse_hooks)
    if (j.contains("cgroups")) s.cgroups = TRY(strings(j["cgroups"], "cgroups"));
    if (j.contains("network")) {
        const json& n = j["network"];
        if (!n.is_object()) return bad("network: not an object");
        for (const auto& [k, v] : n.items())
            if (k != "netns" && k != "links" && k != "taps") return bad("network: unknown key " + k);
        if (!n.contains("netns") || !n.contains("links")) return bad("network: missing netns or links");
        s.netns = TRY(str(n["netns"], "network.netns"));
        s.net_links = TRY(strings(n["links"], "network.links"));
        if (n.contains("taps")) s.net_taps = TRY(strings(n["taps"], "network.taps"));
    }
    if (j.contains("sandbox")) s.sandbox = TRY(str(j["sandbox"], "sandbox"));
    if (j.contains("exit_code")) s.exit_code = int(TRY(integer(j["exit_code"], "exit_code", INT32_MIN, INT32_MAX)));
    if (j.contains("exit_signal")) s.exit_signal = int(TRY(integer(j["exit_signal"], "exit_signal", 0, 64)));
    return s;
}

Result<State> read_state(const StatePaths& p) {
    auto text = sys::read_file(p.state_json, 1 << 20);
    if (!text) return tl::unexpected(text.error());
    json j = json::parse(*text, nullptr, false);
    if (j.is_discarded()) return fail("corrupt state file " + p.state_json, EINVAL);
    return state_from_json(j);
}

Result<void> write_state(const StatePaths& p, const State& s) {
    return sys::write_file_atomic(p.state_json, state_to_json(s).dump() + "\n", 0600);
}

std::string effective_status(const State& s) {
    if (s.status == status::kStopped) return s.status;
    if (s.status == status::kCreating) {
        // Creating with a live creator is a real state; with no shim at all
        // it is a create that died halfway.
        if (s.pid == 0 || sys::process_alive(s.pid, s.pid_start)) return s.status;
        return status::kStopped;
    }
    if (!sys::process_alive(s.pid, s.pid_start)) return status::kStopped;
    return s.status;
}

json oci_state(const State& s) {
    std::string st = effective_status(s);
    json j = {{"ociVersion", "1.0.2"},
              {"id", s.id},
              {"status", st},
              {"pid", (st == status::kStopped) ? 0 : s.pid},
              {"bundle", s.bundle},
              {"rootfs", s.rootfs},
              {"created", s.created},
              {"owner", s.owner}};
    j["annotations"] = s.annotations.empty() ? json::object() : json(s.annotations);
    return j;
}

nlohmann::ordered_json runc_state(const State& s) {
    std::string st = effective_status(s);
    nlohmann::ordered_json j;
    j["ociVersion"] = "1.0.2";
    j["id"] = s.id;
    j["pid"] = st == status::kStopped ? 0 : s.pid;
    j["status"] = st;
    j["bundle"] = s.bundle;
    j["rootfs"] = s.rootfs;
    j["created"] = s.created;
    if (!s.annotations.empty()) j["annotations"] = s.annotations;
    j["owner"] = s.owner;
    return j;
}

std::string now_rfc3339() {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char buf[64];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    char out[96];
    snprintf(out, sizeof out, "%s.%09ldZ", buf, ts.tv_nsec);
    return out;
}

Result<ContainerLock> ContainerLock::acquire(const StatePaths& p) {
    auto fd = sys::open(p.dir, O_RDONLY | O_DIRECTORY);
    if (!fd) {
        if (fd.error().code == ENOENT || fd.error().code == ENOTDIR) return fail("container does not exist", ENOENT);
        return tl::unexpected(fd.error());
    }
    return lock(p, std::move(*fd));
}

Result<ContainerLock> ContainerLock::acquire_new(const StatePaths& p) {
    auto fd = TRY(sys::open(p.dir, O_RDONLY | O_DIRECTORY));
    return lock(p, std::move(fd));
}

Result<ContainerLock> ContainerLock::lock(const StatePaths& p, sys::Fd fd) {
    TRY_CTX(sys::flock(fd.get(), LOCK_EX), "lock " + p.dir);
    // The holder before us may have deleted (or deleted and re-created)
    // the directory: the lock only counts if it is still the same inode.
    struct stat a, b;
    if (fstat(fd.get(), &a) < 0) return fail_errno("stat " + p.dir);
    if (stat(p.dir.c_str(), &b) < 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev)
        return fail("container does not exist", ENOENT);
    ContainerLock l;
    l.fd_ = std::move(fd);
    return l;
}

}  // namespace husk
