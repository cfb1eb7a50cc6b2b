#include "husk/ps.h"

#include <cstdio>

namespace husk {

namespace {

std::string fmt(const char* f, auto... args) {
    char buf[512];
    std::snprintf(buf, sizeof buf, f, args...);
    return buf;
}

// ps's STIME/START: HH:MM today, MonDD this year, else the year.
std::string start_time(time_t t, time_t now) {
    struct tm a, b;
    localtime_r(&t, &a);
    localtime_r(&now, &b);
    char buf[16];
    if (a.tm_year == b.tm_year && a.tm_yday == b.tm_yday) std::strftime(buf, sizeof buf, "%H:%M", &a);
    else if (a.tm_year == b.tm_year) std::strftime(buf, sizeof buf, "%b%d", &a);
    else std::strftime(buf, sizeof buf, "%Y", &a);
    return buf;
}

// -f's TIME: [DD-]HH:MM:SS.
std::string cpu_time(double secs) {
    long s = long(secs);
    std::string days = s >= 86400 ? std::to_string(s / 86400) + "-" : "";
    s %= 86400;
    return days + fmt("%02ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

std::string user_of(const proto::PsProcess& p) { return p.user.empty() ? std::to_string(p.uid) : p.user; }

}  // namespace

namespace {
struct PsForm {
    bool full = false, bsd = false, user = false;
};

Result<PsForm> ps_form(const std::vector<std::string>& given) {
    std::vector<std::string> opts = given.empty() ? std::vector<std::string>{"-ef"} : given;
    bool full = false, bsd = false, unix_style = false, user = false;
    for (const auto& o : opts) {
        bool dash = !o.empty() && o[0] == '-';
        std::string letters = dash ? o.substr(1) : o;
        if (letters.empty()) return fail("ps option \"" + o + "\" is not one husk knows", EINVAL);
        for (char c : letters) {
            if (dash && (c == 'e' || c == 'A')) unix_style = true;
            else if (dash && c == 'f') unix_style = full = true;
            else if (!dash && (c == 'a' || c == 'x')) bsd = true;
            else if (!dash && c == 'u') bsd = user = true;
            else
                return fail("ps option \"" + o + "\": a guest's processes are listed by husk itself, which knows -e, -A, -f and "
                            "a, u, x (the container's processes are always all listed)", EINVAL);
        }
    }
    if (bsd && unix_style) return fail("ps options: UNIX (-ef) and BSD (aux) forms cannot be mixed", EINVAL);
    return PsForm{full, bsd, user};
}
}  // namespace

Result<void> check_ps_options(const std::vector<std::string>& opts) {
    TRY(ps_form(opts));
    return {};
}

Result<std::string> format_ps(const std::vector<proto::PsProcess>& procs, const std::vector<std::string>& given, time_t now) {
    auto [full, bsd, user] = TRY(ps_form(given));
    std::string out;
    if (user) {
        out = "USER       PID %CPU %MEM    VSZ   RSS TTY      STAT START   TIME COMMAND\n";
        for (const auto& p : procs) {
            long t = long(p.cpu);
            out += fmt("%-8s %5d %4.1f %4.1f %6ld %5ld %-8s %-4s %5s %3ld:%02ld %s\n", user_of(p).substr(0, 8).c_str(),
                       int(p.pid), p.pcpu, p.pmem, long(p.vsz), long(p.rss),
                       p.tty.c_str(), p.stat.c_str(),
                       start_time(time_t(p.start), now).c_str(), t / 60, t % 60, p.cmd.c_str());
        }
    } else if (bsd) {
        out = "  PID TTY      STAT   TIME COMMAND\n";
        for (const auto& p : procs) {
            long t = long(p.cpu);
            out += fmt("%5d %-8s %-6s %ld:%02ld %s\n", int(p.pid), p.tty.c_str(),
                       p.stat.c_str(), t / 60, t % 60, p.cmd.c_str());
        }
    } else if (full) {
        out = "UID        PID  PPID  C STIME TTY          TIME CMD\n";
        for (const auto& p : procs)
            out += fmt("%-8s %5d %5d %2d %5s %-8s %8s %s\n", user_of(p).substr(0, 8).c_str(), int(p.pid),
                       int(p.ppid), int(p.pcpu), start_time(time_t(p.start), now).c_str(),
                       p.tty.c_str(), cpu_time(p.cpu).c_str(), p.cmd.c_str());
    } else {
        out = "  PID TTY          TIME CMD\n";
        for (const auto& p : procs)
            out += fmt("%5d %-8s %8s %s\n", int(p.pid), p.tty.c_str(),
                       cpu_time(p.cpu).c_str(), p.comm.c_str());
    }
    return out;
}

}  // namespace husk
