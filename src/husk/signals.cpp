#include "husk/signals.h"

#include "husk/numbers.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <utility>

namespace husk {

namespace {
const std::pair<const char*, int> kSignals[] = {
    {"HUP", SIGHUP},       {"INT", SIGINT},       {"QUIT", SIGQUIT},     {"ILL", SIGILL},     {"TRAP", SIGTRAP},
    {"ABRT", SIGABRT},     {"IOT", SIGIOT},       {"BUS", SIGBUS},       {"FPE", SIGFPE},     {"KILL", SIGKILL},
    {"USR1", SIGUSR1},     {"SEGV", SIGSEGV},     {"USR2", SIGUSR2},     {"PIPE", SIGPIPE},   {"ALRM", SIGALRM},
    {"TERM", SIGTERM},     {"STKFLT", SIGSTKFLT}, {"CHLD", SIGCHLD},     {"CLD", SIGCHLD},    {"CONT", SIGCONT},
    {"STOP", SIGSTOP},     {"TSTP", SIGTSTP},     {"TTIN", SIGTTIN},     {"TTOU", SIGTTOU},   {"URG", SIGURG},
    {"XCPU", SIGXCPU},     {"XFSZ", SIGXFSZ},     {"VTALRM", SIGVTALRM}, {"PROF", SIGPROF},   {"WINCH", SIGWINCH},
    {"IO", SIGIO},         {"POLL", SIGPOLL},     {"PWR", SIGPWR},       {"SYS", SIGSYS},
};
// Linux's real-time range as the kernel sees it (glibc reserves 32, 33).
constexpr int kRtMin = 34;
constexpr int kRtMax = 64;

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}
}  // namespace

Result<int> parse_signal(const std::string& in) {
    auto bad = [&] { return fail("unknown signal \"" + in + "\"", EINVAL); };
    if (all_digits(in)) {
        if (in.size() > 3) return bad();
        int n = parse_number<int>(in).value_or(0);
        if (n < 1 || n > kRtMax) return bad();
        return n;
    }
    std::string s = in;
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
    if (s.rfind("SIG", 0) == 0) s = s.substr(3);
    for (auto& [name, num] : kSignals)
        if (s == name) return num;
    auto rt = [&](const std::string& base, int origin, int dir) -> Result<int> {
        if (s == base) return origin;
        if (s.rfind(base, 0) != 0) return bad();
        std::string rest = s.substr(base.size());
        char sign = rest.empty() ? 0 : rest[0];
        if ((dir > 0 && sign != '+') || (dir < 0 && sign != '-') || !all_digits(rest.substr(1)) || rest.size() > 3)
            return bad();
        int n = origin + dir * parse_number<int>(rest.substr(1)).value_or(kRtMax + 1);
        if (n < kRtMin || n > kRtMax) return bad();
        return n;
    };
    if (s.rfind("RTMIN", 0) == 0) return rt("RTMIN", kRtMin, +1);
    if (s.rfind("RTMAX", 0) == 0) return rt("RTMAX", kRtMax, -1);
    return bad();
}

std::string signal_name(int sig) {
    for (auto& [name, num] : kSignals)
        if (num == sig) return std::string("SIG") + name;
    if (sig >= kRtMin && sig <= kRtMax) return "SIGRTMIN+" + std::to_string(sig - kRtMin);
    return "signal " + std::to_string(sig);
}

sigset_t forwarded_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int s : {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT, SIGCHLD, SIGWINCH})
        sigaddset(&set, s);
    return set;
}

int wait_forwarding(pid_t child) {
    sigset_t fwd = forwarded_signals();
    int wst = 0;
    for (;;) {
        pid_t r = ::waitpid(child, &wst, WNOHANG);
        if (r == child || (r < 0 && errno != EINTR)) return wst;
        siginfo_t si;
        struct timespec ts{0, 200 * 1000 * 1000};
        int sig = sigtimedwait(&fwd, &si, &ts);
        if (sig > 0 && sig != SIGCHLD && sig != SIGWINCH) ::kill(child, sig);
    }
}

}  // namespace husk
