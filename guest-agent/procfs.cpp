#include "guest-agent/procfs.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>

#include "sys/sys.h"

namespace husk::agent {

namespace {

std::string pid_ns_of(pid_t pid) {
    char link[256];
    ssize_t l = ::readlink(("/proc/" + std::to_string(pid) + "/ns/pid").c_str(), link, sizeof link - 1);
    return l > 0 ? std::string(link, size_t(l)) : std::string();
}

// The pid a process has in its innermost pid namespace (NSpid's last field).
int inner_pid(const std::string& status) {
    std::string v = status_field(status, "NSpid");
    auto sp = v.find_last_of("\t ");
    return std::atoi((sp == std::string::npos ? v : v.substr(sp + 1)).c_str());
}

// uid -> name from an /etc/passwd text.
std::map<long, std::string> passwd_names(const std::string& text) {
    std::map<long, std::string> out;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = text.find('\n', pos);
        if (end == std::string::npos) end = text.size();
        std::string line = text.substr(pos, end - pos);
        size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
        size_t c = b == std::string::npos ? b : line.find(':', b + 1);
        if (c != std::string::npos) {
            char* e = nullptr;
            std::string uid = line.substr(b + 1, c - b - 1);
            long v = std::strtol(uid.c_str(), &e, 10);
            if (!uid.empty() && *e == '\0') out.emplace(v, line.substr(0, a));
        }
        pos = end + 1;
    }
    return out;
}

double number(const std::string& s) { return std::strtod(s.c_str(), nullptr); }

}  // namespace

std::vector<pid_t> pids_in_ns_of(pid_t init) {
    std::vector<pid_t> out;
    std::string ns = pid_ns_of(init);
    if (ns.empty()) return out;
    for (const auto& n : sys::list_dir("/proc").value_or(std::vector<std::string>{})) {
        pid_t q = pid_t(std::atoi(n.c_str()));
        if (q > 1 && q != getpid() && pid_ns_of(q) == ns) out.push_back(q);
    }
    return out;
}

std::string status_field(const std::string& status, const std::string& key) {
    // The line "Key:", at the start (Name:, MemTotal:) or after a newline.
    size_t at = 0;
    if (status.rfind(key + ":", 0) != 0) {
        at = status.find("\n" + key + ":");
        if (at == std::string::npos) return "";
        ++at;
    }
    size_t b = at + key.size() + 1, end = status.find('\n', b);
    std::string v = status.substr(b, end - b);
    while (!v.empty() && (v[0] == '\t' || v[0] == ' ')) v.erase(0, 1);
    return v;
}

std::vector<std::string> stat_fields(const std::string& stat) {
    std::vector<std::string> out;
    size_t rp = stat.rfind(')');  // the command name may hold spaces and ')'
    if (rp == std::string::npos) return out;
    size_t pos = rp + 2;
    while (pos < stat.size()) {
        size_t e = stat.find_first_of(" \n", pos);
        if (e == std::string::npos) e = stat.size();
        out.push_back(stat.substr(pos, e - pos));
        pos = e + 1;
    }
    return out;
}

std::string tty_name(unsigned long nr) {
    unsigned major = unsigned((nr >> 8) & 0xfff), minor = unsigned((nr & 0xff) | ((nr >> 12) & 0xfff00));
    if (nr == 0) return "?";
    if (major >= 136 && major <= 143) return "pts/" + std::to_string((major - 136) * 256 + minor);
    if (major == 4 && minor < 64) return "tty" + std::to_string(minor);
    if (major == 4) return "ttyS" + std::to_string(minor - 64);
    return "?";
}

bool takes_signal(const std::string& status, int sig) {
    if (sig < 1 || sig > 64) return false;
    uint64_t mask = 0;
    for (const char* k : {"SigBlk", "SigCgt"}) mask |= std::strtoull(status_field(status, k).c_str(), nullptr, 16);
    return (mask >> (sig - 1)) & 1;
}

std::optional<std::string> cgroup_path(const std::string& proc_cgroup) {
    // cgroup v2's line: "0::/path".
    size_t pos = proc_cgroup.rfind("0::", 0) == 0 ? 0 : proc_cgroup.find("\n0::");
    if (pos == std::string::npos) return std::nullopt;
    pos += proc_cgroup[pos] == '\n' ? 4 : 3;
    size_t end = proc_cgroup.find('\n', pos);
    return proc_cgroup.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
}

bool in_cgroup(const std::string& proc_cgroup, const std::string& group) {
    auto path = cgroup_path(proc_cgroup);
    if (!path) return false;
    return *path == group || (path->size() > group.size() && path->compare(0, group.size(), group) == 0 && (*path)[group.size()] == '/');
}

std::vector<pid_t> container_pids(pid_t init, const std::string& group) {
    auto pids = pids_in_ns_of(init);
    if (group.empty()) return pids;
    std::erase_if(pids, [&](pid_t q) {
        return q != init && !in_cgroup(sys::read_file("/proc/" + std::to_string(q) + "/cgroup", 4096).value_or(""), group);
    });
    return pids;
}

std::vector<proto::PsProcess> ps_processes(pid_t init, const std::vector<pid_t>& pids) {
    long hz = ::sysconf(_SC_CLK_TCK);
    if (hz <= 0) hz = 100;
    double uptime = number(sys::read_file("/proc/uptime").value_or("0"));
    std::string pstat = sys::read_file("/proc/stat", 1 << 20).value_or("");
    size_t bt = pstat.find("\nbtime ");
    double btime = bt == std::string::npos ? 0 : number(pstat.substr(bt + 7));
    double mem_total = number(status_field(sys::read_file("/proc/meminfo", 65536).value_or(""), "MemTotal"));
    auto names = passwd_names(sys::read_file("/proc/" + std::to_string(init) + "/root/etc/passwd", 1 << 20).value_or(""));
    std::vector<proto::PsProcess> out;
    for (pid_t q : pids) {
        std::string base = "/proc/" + std::to_string(q);
        auto status = sys::read_file(base + "/status", 65536).value_or("");
        auto f = stat_fields(sys::read_file(base + "/stat", 4096).value_or(""));
        if (f.size() < 22) continue;  // gone meanwhile
        std::string comm = status_field(status, "Name");
        std::string cmd = sys::read_file(base + "/cmdline", 4096).value_or("");
        for (auto& c : cmd)
            if (c == '\0') c = ' ';
        while (!cmd.empty() && cmd.back() == ' ') cmd.pop_back();
        if (cmd.empty()) cmd = "[" + comm + "]";
        // The parent as the container sees it, if it is inside.
        pid_t pp = std::atoi(f[1].c_str());
        int ppid = 0;
        if (std::find(pids.begin(), pids.end(), pp) != pids.end())
            ppid = inner_pid(sys::read_file("/proc/" + std::to_string(pp) + "/status", 65536).value_or(""));
        long uid = std::atol(status_field(status, "Uid").c_str());
        // stat: state(0) ppid(1) pgrp(2) session(3) tty_nr(4) tpgid(5) ...
        // utime(11) stime(12) ... nice(16) num_threads(17) ... starttime(19) vsize(20) rss(21)
        double started = number(f[19]) / double(hz);
        double cpu = (number(f[11]) + number(f[12])) / double(hz);
        double elapsed = uptime - started;
        double rss_kib = number(f[21]) * double(::sysconf(_SC_PAGESIZE)) / 1024;
        long nice = std::atol(f[16].c_str());
        std::string stat = f[0];
        if (nice < 0) stat += "<";
        else if (nice > 0) stat += "N";
        if (f[3] == std::to_string(q)) stat += "s";  // a session leader
        if (std::atol(f[17].c_str()) > 1) stat += "l";
        if (f[4] != "0" && f[2] == f[5]) stat += "+";  // in its terminal's foreground group
        auto user = names.find(uid);
        int pid = inner_pid(status);
        if (pid <= 0) continue;  // gone meanwhile
        out.push_back({.pid = pid,
                       .ppid = ppid,
                       .uid = uid,
                       .user = user == names.end() ? "" : user->second,
                       .state = f[0],
                       .stat = stat,
                       .cmd = cmd,
                       .comm = comm,
                       .tty = tty_name(std::strtoul(f[4].c_str(), nullptr, 10)),
                       .start = int64_t(btime + started),
                       .cpu = cpu,
                       .pcpu = elapsed > 0 ? cpu * 100 / elapsed : 0.0,
                       .pmem = mem_total > 0 ? rss_kib * 100 / mem_total : 0.0,
                       .vsz = int64_t(number(f[20]) / 1024),
                       .rss = int64_t(rss_kib)});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.pid < b.pid; });
    return out;
}

}  // namespace husk::agent
