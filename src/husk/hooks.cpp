#include "husk/hooks.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "sys/sys.h"

namespace husk {

namespace {

Result<void> run_hook(const SpecHook& h, const std::string& stage, const std::string& state) {
    std::string what = stage + " hook " + h.path;
    auto [in_r, in_w] = TRY_CTX(sys::pipe(O_CLOEXEC), what);
    auto [out_r, out_w] = TRY_CTX(sys::pipe(O_CLOEXEC), what);
    // The state goes into the pipe before the hook starts, so nothing is
    // ever written to a hook that has exited (SIGPIPE) or does not read
    // (a full pipe).
    if (state.size() > 65536 && ::fcntl(in_w.get(), F_SETPIPE_SZ, int(state.size())) < 0)
        return fail_errno(what + ": state of " + std::to_string(state.size()) + " bytes does not fit a pipe");
    TRY(sys::set_nonblock(in_w.get(), true));
    TRY_CTX(sys::write_all(in_w.get(), state), what + ": state");
    in_w.reset();
    sys::SpawnOptions o;
    o.fds = {{in_r.get(), 0}, {out_w.get(), 1}, {out_w.get(), 2}};
    o.path = h.path;
    o.env = h.env;
    std::vector<std::string> argv = h.args.empty() ? std::vector<std::string>{h.path} : h.args;
    pid_t pid = TRY_CTX(sys::spawn(argv, o), what);
    in_r.reset();
    out_w.reset();
    TRY(sys::set_nonblock(out_r.get(), true));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(h.timeout);
    std::string output;
    int st = 0;
    for (;;) {
        pid_t r = ::waitpid(pid, &st, WNOHANG);
        char buf[4096];
        ssize_t n;
        while ((n = ::read(out_r.get(), buf, sizeof buf)) > 0)
            if (output.size() < 4096) output.append(buf, size_t(n));
        if (r == pid) break;
        if (h.timeout > 0 && std::chrono::steady_clock::now() >= deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            return fail(what + ": timed out after " + std::to_string(h.timeout) + "s", ETIMEDOUT);
        }
        (void)sys::wait_fd(out_r.get(), POLLIN, 50);
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return {};
    while (!output.empty() && (output.back() == '\n' || output.back() == ' ')) output.pop_back();
    std::string why = WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                                      : "exit status " + std::to_string(WEXITSTATUS(st));
    return fail(what + ": " + why + (output.empty() ? "" : ": " + output), ECANCELED);
}

}  // namespace

Result<void> run_hooks(const std::vector<SpecHook>& hooks, const std::string& stage, const nlohmann::json& state) {
    std::string s = state.dump();
    for (const auto& h : hooks) TRY(run_hook(h, stage, s));
    return {};
}

std::vector<std::string> run_all_hooks(const std::vector<SpecHook>& hooks, const std::string& stage, const nlohmann::json& state) {
    std::string s = state.dump();
    std::vector<std::string> errors;
    for (const auto& h : hooks)
        if (auto r = run_hook(h, stage, s); !r) errors.push_back(r.error().message);
    return errors;
}

}  // namespace husk
