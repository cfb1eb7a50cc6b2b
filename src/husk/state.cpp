#include "husk/state.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

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
    if (!s.net_links.empty()) j["network"] = {{"netns", s.netns}, {"links", s.net_links}};
    if (!s.net_taps.empty()) j["network"]["taps"] = s.net_taps;
    if (!s.sandbox.empty()) j["sandbox"] = s.sandbox;
    if (s.exit_code) j["exit_code"] = *s.exit_code;
    if (s.exit_signal) j["exit_signal"] = *s.exit_signal;
    return j;
}

Result<State> state_from_json(const json& j) {
    try {
        State s;
        s.id = j.at("id").get<std::string>();
        s.bundle = j.at("bundle").get<std::string>();
        s.rootfs = j.value("rootfs", "");
        s.status = j.at("status").get<std::string>();
        s.created = j.value("created", "");
        s.owner = j.value("owner", "");
        s.pid = j.value("pid", 0);
        s.pid_start = j.value("pid_start", 0ull);
        s.vmm_pid = j.value("vmm_pid", 0);
        s.vmm_start = j.value("vmm_start", 0ull);
        s.sandbox = j.value("sandbox", "");
        if (j.contains("exit_code")) s.exit_code = j["exit_code"].get<int>();
        if (j.contains("exit_signal")) s.exit_signal = j["exit_signal"].get<int>();
        if (j.contains("annotations")) s.annotations = j["annotations"].get<std::map<std::string, std::string>>();
        if (j.contains("hooks")) s.hooks = j["hooks"];
        if (j.contains("cgroups")) s.cgroups = j["cgroups"].get<std::vector<std::string>>();
        if (j.contains("network")) {
            s.netns = j["network"].at("netns").get<std::string>();
            s.net_links = j["network"].at("links").get<std::vector<std::string>>();
            s.net_taps = j["network"].value("taps", std::vector<std::string>{});
        }
        return s;
    } catch (const json::exception& e) {
        return fail(std::string("corrupt state: ") + e.what(), EINVAL);
    }
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
