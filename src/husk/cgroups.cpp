#include "husk/cgroups.h"

#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <map>
#include <sstream>
#include <thread>

#include "husk/numbers.h"
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

namespace {

std::string path_of(const std::string& at, const std::string& key) { return at.empty() ? key : at + "." + key; }

const json& section(const json& res, const char* name) {
    static const json none = json::object();
    auto it = res.find(name);
    return it != res.end() && it->is_object() ? *it : none;
}

std::string max_or(int64_t v) { return v < 0 ? "max" : std::to_string(v); }

// runc's mapping of [2, 262144] cpu shares onto [1, 10000] cgroup v2 weight.
std::string shares_to_weight(uint64_t shares) {
    shares = std::clamp<uint64_t>(shares, 2, 262144);
    return std::to_string(1 + ((shares - 2) * 9999) / 262142);
}

}  // namespace

Result<CgroupFiles> guest_cgroup_files(const json& res, const std::string& at) {
    CgroupFiles out;
    auto put = [&](const std::string& f, const std::string& v) { out.writes.emplace_back(f, v); };
    auto warn = [&](const std::string& key, const std::string& why) {
        out.warnings.push_back(path_of(at, key) + ": " + why);
    };

    const json& cpu = section(res, "cpu");
    if (cpu.contains("cpus")) put("cpuset.cpus", cpu["cpus"].get<std::string>());
    if (cpu.contains("mems")) put("cpuset.mems", cpu["mems"].get<std::string>());
    if (uint64_t shares = cpu.value("shares", uint64_t(0)); shares != 0) put("cpu.weight", shares_to_weight(shares));
    if (cpu.contains("quota") || cpu.contains("period")) {
        int64_t quota = cpu.value("quota", int64_t(0));
        uint64_t period = cpu.value("period", uint64_t(0));
        if (period == 0) period = 100000;
        put("cpu.max", (quota > 0 ? std::to_string(quota) : std::string("max")) + " " + std::to_string(period));
    }
    if (cpu.contains("burst")) put("cpu.max.burst", std::to_string(cpu["burst"].get<uint64_t>()));
    if (cpu.contains("idle")) put("cpu.idle", std::to_string(cpu["idle"].get<int64_t>()));
    if (cpu.value("realtimeRuntime", int64_t(0)) != 0 || cpu.value("realtimePeriod", uint64_t(0)) != 0)
        warn("cpu.realtimeRuntime", "real-time scheduling limits do not exist in cgroup v2; ignored");

    const json& mem = section(res, "memory");
    int64_t limit = mem.value("limit", int64_t(0));
    if (limit != 0) put("memory.max", max_or(limit));
    if (mem.contains("reservation") && mem["reservation"].get<int64_t>() != 0)
        put("memory.low", max_or(mem["reservation"].get<int64_t>()));
    if (mem.contains("swap") && mem["swap"].get<int64_t>() != 0) {
        // OCI's swap is memory+swap (v1); v2's swap.max is swap alone.
        int64_t swap = mem["swap"].get<int64_t>();
        if (swap == -1) put("memory.swap.max", "max");
        else if (limit <= 0)
            return fail(path_of(at, "memory.swap") + ": a swap limit needs a memory limit", EINVAL);
        else if (swap < limit)
            return fail(path_of(at, "memory.swap") + ": must not be below memory.limit (it counts memory plus swap)", EINVAL);
        else put("memory.swap.max", std::to_string(swap - limit));
    }
    if (mem.contains("kernel") || mem.contains("kernelTCP"))
        warn("memory.kernel", "kernel memory limits are deprecated and do not exist in cgroup v2; ignored");
    if (mem.contains("swappiness")) warn("memory.swappiness", "cgroup v2 has no per-cgroup swappiness; ignored");
    if (mem.value("disableOOMKiller", false))
        warn("memory.disableOOMKiller", "cgroup v2 cannot disable the OOM killer; ignored");

    const json& pids = section(res, "pids");
    if (pids.contains("limit") && pids["limit"].get<int64_t>() != 0)
        put("pids.max", pids["limit"].get<int64_t>() > 0 ? std::to_string(pids["limit"].get<int64_t>()) : "max");

    const json& bio = section(res, "blockIO");
    if (uint64_t w = bio.value("weight", uint64_t(0)); w != 0) {
        if (w < 10 || w > 1000) return fail(path_of(at, "blockIO.weight") + ": must be between 10 and 1000", EINVAL);
        put("io.weight", "default " + std::to_string(1 + (w - 10) * 9999 / 990));
    }
    for (const char* list : {"weightDevice", "throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice",
                             "throttleWriteIOPSDevice"})
        if (bio.contains(list) && !bio[list].empty())
            warn(std::string("blockIO.") + list, "names host block devices, which the VM does not have; ignored");
    if (res.contains("network") && !res["network"].is_null())
        warn("network", "net_cls/net_prio exist only in cgroup v1; ignored");
    if (res.contains("rdma") && !res["rdma"].is_null()) warn("rdma", "the VM has no RDMA devices; ignored");

    for (const auto& h : res.value("hugepageLimits", json::array()))
        put("hugetlb." + h["pageSize"].get<std::string>() + ".max", std::to_string(h["limit"].get<uint64_t>()));
    // Unified entries are written as given, after (and so over) the rest.
    for (auto& [k, v] : section(res, "unified").items()) put(k, v.get<std::string>());
    return out;
}

std::vector<proto::DeviceRule> guest_device_rules(const json& res) {
    std::vector<proto::DeviceRule> rules;
    for (const auto& d : res.value("devices", json::array()))
        rules.push_back({d["allow"].get<bool>(), d.value("type", "a"), d.value("major", int64_t(-1)), d.value("minor", int64_t(-1)),
                         d.value("access", "rwm")});
    // runc's AllowedDevices, appended so they win over a deny-all.
    static const proto::DeviceRule defaults[] = {
        {true, "c", -1, -1, "m"},  {true, "b", -1, -1, "m"},    {true, "c", 1, 3, "rwm"}, {true, "c", 1, 8, "rwm"},
        {true, "c", 1, 7, "rwm"},  {true, "c", 5, 0, "rwm"},    {true, "c", 1, 5, "rwm"}, {true, "c", 1, 9, "rwm"},
        {true, "c", 136, -1, "rwm"}, {true, "c", 5, 2, "rwm"}, {true, "c", 10, 200, "rwm"}};
    rules.insert(rules.end(), std::begin(defaults), std::end(defaults));
    return rules;
}

const std::vector<std::string>& stats_files() {
    static const std::vector<std::string> files = {"cpu.stat",       "memory.current", "memory.max",
                                                   "memory.peak",    "memory.stat",    "memory.events",
                                                   "memory.swap.current", "memory.swap.max", "pids.current",
                                                   "pids.max",       "cpuset.cpus.effective", "cpuset.mems.effective"};
    return files;
}

namespace {

// "key value" lines -> map.
std::map<std::string, uint64_t> flat_keyed(const std::string& text) {
    std::map<std::string, uint64_t> out;
    std::istringstream in(text);
    std::string k;
    uint64_t v;
    while (in >> k >> v) out[k] = v;
    return out;
}

// A file's content without the newline the kernel ends it with ("" if absent).
std::string text(const proto::CgroupStats& files, const std::string& name) {
    auto it = files.find(name);
    std::string s = it != files.end() ? it->second : std::string();
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

uint64_t single(const proto::CgroupStats& files, const std::string& name) { return cgroup_figure(files, name).value_or(0); }

// "0-2,4" -> [0,1,2,4]
json cpu_list(const std::string& s) {
    json out = json::array();
    std::istringstream in(s);
    std::string part;
    while (std::getline(in, part, ',')) {
        auto dash = part.find('-');
        auto a = parse_number<unsigned>(std::string_view(part).substr(0, dash));
        auto b = dash == std::string::npos ? a : parse_number<unsigned>(std::string_view(part).substr(dash + 1));
        if (a && b)
            for (unsigned i = *a; i <= *b && i < 4096; ++i) out.push_back(i);
    }
    return out;
}

}  // namespace

std::optional<uint64_t> cgroup_figure(const proto::CgroupStats& files, const std::string& name) {
    std::string s = text(files, name);
    if (s.rfind("max", 0) == 0) return UINT64_MAX;
    return parse_number<uint64_t>(s);
}

uint64_t oom_kills(const proto::CgroupStats& files) { return flat_keyed(text(files, "memory.events"))["oom_kill"]; }

// runc's types.Stats, its fields in the struct's order (as Go prints them).
nlohmann::ordered_json runc_stats(const proto::CgroupStats& files) {
    using ojson = nlohmann::ordered_json;
    auto cpu = flat_keyed(text(files, "cpu.stat"));
    ojson usage = {{"total", cpu["usage_usec"] * 1000}, {"kernel", cpu["system_usec"] * 1000}, {"user", cpu["user_usec"] * 1000}};
    ojson throttling = ojson::object();
    if (cpu["nr_periods"]) throttling["periods"] = cpu["nr_periods"];
    if (cpu["nr_throttled"]) throttling["throttledPeriods"] = cpu["nr_throttled"];
    if (cpu["throttled_usec"]) throttling["throttledTime"] = cpu["throttled_usec"] * 1000;

    auto raw = flat_keyed(text(files, "memory.stat"));
    auto events = flat_keyed(text(files, "memory.events"));
    ojson memory = {{"cache", raw["file"]},
                   {"usage",
                    {{"usage", single(files, "memory.current")},
                     {"limit", single(files, "memory.max")},
                     {"max", single(files, "memory.peak")},
                     {"failcnt", events["max"]}}},
                   {"swap",
                    {{"usage", single(files, "memory.swap.current")},
                     {"limit", single(files, "memory.swap.max")},
                     {"failcnt", 0}}},
                   {"kernel", {{"limit", 0}, {"failcnt", 0}}},
                   {"kernelTCP", {{"limit", 0}, {"failcnt", 0}}},
                   {"raw", raw}};
    uint64_t plimit = single(files, "pids.max");
    ojson pids = {{"current", single(files, "pids.current")}};
    if (plimit != UINT64_MAX) pids["limit"] = plimit;
    return ojson{{"cpu", {{"usage", usage}, {"throttling", throttling}}},
            {"cpuset",
             {{"cpus", cpu_list(text(files, "cpuset.cpus.effective"))},
              {"mems", cpu_list(text(files, "cpuset.mems.effective"))},
              {"cpu_exclusive", 0}, {"mem_hardwall", 0}, {"mem_exclusive", 0}, {"memory_migrate", 0},
              {"memory_spread_page", 0}, {"memory_spread_slab", 0}, {"memory_pressure", 0},
              {"sched_load_balance", 0}, {"sched_relax_domain_level", 0}}},
            {"memory", memory},
            {"pids", pids},
            {"blkio", ojson::object()},
            {"hugetlb", ojson::object()},
            {"intel_rdt", ojson::object()},
            {"network_interfaces", nullptr}};
}

Result<std::vector<std::string>> host_cgroup_dirs(const std::string& cgroups_path, const std::string& mountinfo,
                                                  const std::string& self_cgroup) {
    if (cgroups_path.empty()) return std::vector<std::string>{};
    std::string rel = cgroups_path;
    bool absolute = rel[0] == '/';
    if (!absolute && std::count(rel.begin(), rel.end(), ':') == 2) {
        // systemd: "parent.slice:prefix:name" -> /a.slice/a-b.slice/prefix-name.scope
        auto c1 = rel.find(':'), c2 = rel.find(':', c1 + 1);
        std::string slice = rel.substr(0, c1), prefix = rel.substr(c1 + 1, c2 - c1 - 1), name = rel.substr(c2 + 1);
        if (slice.empty()) slice = "system.slice";
        if (slice.size() < 7 || slice.substr(slice.size() - 6) != ".slice" || slice.find('/') != std::string::npos)
            return fail("cgroupsPath " + cgroups_path + ": \"" + slice + "\" is not a systemd slice", EINVAL);
        std::string path;
        if (slice != "-.slice") {
            std::string stem = slice.substr(0, slice.size() - 6), acc;
            size_t pos = 0;
            for (;;) {
                size_t dash = stem.find('-', pos);
                acc = stem.substr(0, dash);
                path += "/" + acc + ".slice";
                if (dash == std::string::npos) break;
                pos = dash + 1;
            }
        }
        rel = path + "/" + (prefix.empty() ? name : prefix + "-" + name) + (name.size() > 6 && name.substr(name.size() - 6) == ".slice" ? "" : ".scope");
        absolute = true;
    }
    for (size_t pos = 0; pos <= rel.size();) {
        size_t e = rel.find('/', pos);
        if (e == std::string::npos) e = rel.size();
        if (rel.substr(pos, e - pos) == "..") return fail("cgroupsPath " + cgroups_path + ": must not contain \"..\"", EINVAL);
        pos = e + 1;
    }
    // The caller's cgroup per hierarchy: "4:memory:/a/b", "0::/x".
    std::map<std::string, std::string> own;
    {
        std::istringstream in(self_cgroup);
        std::string line;
        while (std::getline(in, line)) {
            auto a = line.find(':'), b = line.find(':', a + 1);
            if (a == std::string::npos || b == std::string::npos) continue;
            std::string ctrls = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
            if (ctrls.empty()) own["cgroup2"] = path;
            std::istringstream cs(ctrls);
            std::string c;
            while (std::getline(cs, c, ',')) own[c] = path;
        }
    }
    std::vector<std::string> dirs;
    std::istringstream in(mountinfo);
    std::string line;
    while (std::getline(in, line)) {
        // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        std::istringstream ls(line);
        std::vector<std::string> f;
        std::string w;
        while (ls >> w) f.push_back(w);
        auto dash = std::find(f.begin(), f.end(), "-");
        if (f.size() < 5 || dash == f.end() || dash + 3 > f.end()) continue;
        std::string fstype = *(dash + 1), super = *(dash + 3), root = f[3], mp = f[4];
        std::string key;
        if (fstype == "cgroup2") {
            key = "cgroup2";
        } else if (fstype == "cgroup") {
            std::istringstream ss(super);
            std::string o;
            while (std::getline(ss, o, ','))
                if (own.count(o)) key = o;
        } else {
            continue;
        }
        if (key.empty()) continue;
        std::string base = absolute ? "" : own[key];
        if (base == "/") base.clear();
        std::string full = base + (rel[0] == '/' ? rel : "/" + rel);
        // A hierarchy mounted from a sub-cgroup (inside a container) shows
        // paths below its root only.
        if (root != "/") {
            if (full.rfind(root, 0) != 0) continue;
            full = full.substr(root.size());
        }
        std::string dir = mp + full;
        while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
        if (std::find(dirs.begin(), dirs.end(), dir) == dirs.end()) dirs.push_back(dir);
    }
    if (dirs.empty()) return fail("cgroupsPath " + cgroups_path + ": no cgroup hierarchy is mounted", ENOENT);
    return dirs;
}

// A process that joins a frozen group stops at once (in D state, for
// ever): refuse it, as runc does, instead of hanging. v1 says it in
// freezer.state (FROZEN or FREEZING, a parent's freezing included), v2 in
// cgroup.events ("frozen 1", the same).
static bool frozen(const std::string& dir) {
    if (auto v = sys::read_file(dir + "/freezer.state")) return v->rfind("FROZEN", 0) == 0 || v->rfind("FREEZING", 0) == 0;
    if (auto v = sys::read_file(dir + "/cgroup.events")) return v->find("frozen 1") != std::string::npos;
    return false;
}

Result<void> make_host_cgroups(const std::vector<std::string>& dirs) {
    for (const auto& d : dirs) {
        TRY_CTX(sys::mkdir_p(d, 0755), "cgroup");
        if (frozen(d)) return fail("cgroup " + d + " is frozen: a container cannot start in it (thaw it first)", EBUSY);
        // A v1 cpuset group starts with no cpus and no mems, and then no
        // process may join it: copy them down from the nearest parent.
        if (!sys::exists(d + "/cpuset.cpus") || sys::exists(d + "/cgroup.controllers")) continue;
        std::vector<std::string> chain;
        for (std::string p = d; p.find('/', 1) != std::string::npos && sys::exists(p + "/cpuset.cpus");
             p = p.substr(0, p.rfind('/')))
            chain.push_back(p);
        std::reverse(chain.begin(), chain.end());
        for (size_t i = 1; i < chain.size(); ++i)
            for (const char* f : {"cpuset.cpus", "cpuset.mems"}) {
                std::string mine = sys::read_file(chain[i] + "/" + f).value_or("");
                if (mine.find_first_not_of(" \n") != std::string::npos) continue;
                std::string parent = sys::read_file(chain[i - 1] + "/" + f).value_or("");
                TRY_CTX(sys::write_file(chain[i] + "/" + f, parent), "cgroup " + chain[i]);
            }
    }
    return {};
}

void remove_host_cgroups(const std::vector<std::string>& dirs) {
    for (const auto& d : dirs) ::rmdir(d.c_str());
}

static std::vector<pid_t> procs_in(const std::vector<std::string>& dirs) {
    std::vector<pid_t> out;
    for (const auto& d : dirs) {
        std::istringstream in(sys::read_file(d + "/cgroup.procs").value_or(""));
        for (long pid; in >> pid;)
            if (pid > 0 && std::find(out.begin(), out.end(), pid_t(pid)) == out.end()) out.push_back(pid_t(pid));
    }
    return out;
}

size_t kill_host_cgroup_procs(const std::vector<std::string>& dirs, std::chrono::milliseconds grace,
                              std::chrono::milliseconds timeout) {
    auto start = std::chrono::steady_clock::now();
    size_t killed = 0;
    for (;;) {
        auto pids = procs_in(dirs);
        pids.erase(std::remove(pids.begin(), pids.end(), ::getpid()), pids.end());
        auto now = std::chrono::steady_clock::now();
        if (pids.empty() || now >= start + timeout) return killed;
        if (now < start + grace) {  // going by themselves (their VM was stopped): let them
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
            continue;
        }
        for (pid_t pid : pids) {
            // The pidfd names the process that has the pid now; still
            // listed after it was taken, it is ours (a pid reused by a
            // process elsewhere is never signalled).
            auto fd = sys::pidfd_open(pid);
            if (!fd) continue;
            auto listed = procs_in(dirs);
            if (std::find(listed.begin(), listed.end(), pid) == listed.end()) continue;
            if (::syscall(SYS_pidfd_send_signal, fd->get(), SIGKILL, nullptr, 0) == 0) ++killed;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

std::vector<std::pair<std::string, std::string>> host_cgroup_limits(const json& res, std::optional<uint64_t> vm_bound,
                                                                    const std::vector<std::string>& dirs,
                                                                    bool (*has)(const std::string&)) {
    std::vector<std::pair<std::string, std::string>> out;
    const json& cpu = section(res, "cpu");
    const json& mem = section(res, "memory");
    uint64_t shares = cpu.value("shares", uint64_t(0));
    bool quota = cpu.contains("quota") || cpu.contains("period");
    int64_t q = cpu.value("quota", int64_t(0));
    uint64_t period = cpu.value("period", uint64_t(0));
    if (period == 0) period = 100000;
    bool mem_limited = mem.value("limit", int64_t(0)) > 0 && vm_bound;
    for (const auto& d : dirs) {
        auto put = [&](const char* f, const std::string& v) { out.emplace_back(d + "/" + f, v); };
        bool v2 = has(d + "/cgroup.controllers");
        if (!v2 && has(d + "/cpu.cfs_quota_us")) {
            if (shares) put("cpu.shares", std::to_string(shares));
            if (quota) {
                put("cpu.cfs_period_us", std::to_string(period));
                put("cpu.cfs_quota_us", q > 0 ? std::to_string(q) : "-1");
            }
        } else if (v2 && has(d + "/cpu.max")) {
            if (shares) put("cpu.weight", shares_to_weight(shares));
            if (quota) put("cpu.max", (q > 0 ? std::to_string(q) : std::string("max")) + " " + std::to_string(period));
        }
        if (has(d + "/cpuset.cpus")) {
            if (cpu.contains("cpus") && !cpu["cpus"].get<std::string>().empty()) put("cpuset.cpus", cpu["cpus"]);
            if (cpu.contains("mems") && !cpu["mems"].get<std::string>().empty()) put("cpuset.mems", cpu["mems"]);
        }
        if (mem_limited && !v2 && has(d + "/memory.limit_in_bytes")) put("memory.limit_in_bytes", std::to_string(*vm_bound));
        if (mem_limited && v2 && has(d + "/memory.max")) put("memory.max", std::to_string(*vm_bound));
    }
    return out;
}

Result<void> write_host_cgroup_limits(const std::vector<std::pair<std::string, std::string>>& writes) {
    for (const auto& [path, value] : writes) TRY_CTX(sys::write_file(path, value), "host cgroup " + path + " = " + value);
    return {};
}

}  // namespace husk
