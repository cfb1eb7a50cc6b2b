// `husk exec`: a process in a running container. The exec'd process lives
// in the guest, so the pid callers get is a host process that stands in
// for it: it forwards signals (and terminal resizes) to it and exits with
// its status. Its stdio never passes through it: the fds go to the shim
// with SCM_RIGHTS and the shim relays them to the guest.
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <optional>

#include "husk/console.h"
#include "husk/lifecycle.h"
#include "husk/numbers.h"
#include "husk/preserved_fds.h"
#include "husk/relay.h"
#include "husk/sandbox.h"
#include "husk/signals.h"
#include "husk/spec.h"
#include "protocol/creator.h"
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

namespace {

// The process to run: --process FILE as is, or the container's own
// process with the command line's changes (runc's rules: args replace,
// env adds, cwd/user/gids replace, --tty sets the terminal).
Result<SpecProcess> exec_process(const State& st, const ExecOptions& o) {
    SpecProcess p;
    if (!o.process_file.empty()) {
        auto text = TRY_CTX(sys::read_file(o.process_file, 1 << 20), "process file");
        p = TRY(parse_process_file(text, o.process_file));
    } else {
        if (o.args.empty()) return fail("no command given (ARGS or --process FILE)", EINVAL);
        Spec spec = TRY_CTX(load_spec(st.bundle), "container config");
        if (!spec.process) return fail("config.json has no process to base the exec on", EINVAL);
        p = *spec.process;
        p.args = o.args;
        p.terminal = false;
    }
    if (o.tty_set) p.terminal = o.tty;
    if (!o.cwd.empty()) {
        if (o.cwd[0] != '/') return fail("--cwd must be an absolute path, got \"" + o.cwd + "\"", EINVAL);
        p.cwd = o.cwd;
    }
    for (const auto& e : o.env) {
        auto eq = e.find('=');
        if (eq == std::string::npos || eq == 0) return fail("--env: expected KEY=VALUE, got \"" + e + "\"", EINVAL);
        // A later value wins, as it does for runc's workload.
        std::string key = e.substr(0, eq + 1);
        std::erase_if(p.env, [&](const std::string& x) { return x.rfind(key, 0) == 0; });
        p.env.push_back(e);
    }
    if (!o.user.empty()) {
        auto colon = o.user.find(':');
        auto uid = parse_number<uint32_t>(std::string_view(o.user).substr(0, colon));
        auto gid = colon == std::string::npos ? std::optional(p.user.gid)
                                              : parse_number<uint32_t>(std::string_view(o.user).substr(colon + 1));
        if (!uid || !gid) return fail("--user: expected UID[:GID] as numbers, got \"" + o.user + "\"", EINVAL);
        p.user.uid = *uid;
        p.user.gid = *gid;
    }
    if (!o.additional_gids.empty()) p.user.additional_gids = o.additional_gids;
    if (o.no_new_privs) p.no_new_privileges = true;
    return p;
}

}  // namespace

Result<int> exec_container(const Globals& g, const std::string& id, const ExecOptions& o) {
    auto st = TRY(load_state(g, id));
    std::string s = effective_status(st);
    if (s == status::kStopped) return fail("cannot exec in a stopped container", EINVAL);
    if (s == status::kCreating) return fail("cannot exec in a container that is still being created", EINVAL);
    if (s == status::kPaused && !o.ignore_paused) return fail("cannot exec in a paused container (use --ignore-paused)", EBUSY);
    TRY(preserved_fd_flows(o.preserve_fds));  // the shim relays them
    SpecProcess proc = TRY(exec_process(st, o));
    if (!o.console_socket.empty() && !proc.terminal)
        return fail("--console-socket needs a terminal (--tty or process.terminal)", EINVAL);
    if (proc.terminal && o.detach && o.console_socket.empty())
        return fail("cannot allocate a terminal with --detach and no --console-socket", EINVAL);
    proto::ControlRequest req{.op = proto::Op::Exec, .process = agent_process_params(proc), .preserve_fds = o.preserve_fds};
    std::vector<int> extra = preserved_fds(o.preserve_fds);
    auto paths = shim_route(g, st, req);

    if (!proc.terminal && !o.detach) {
        // In the foreground without a terminal we stand in ourselves.
        sigset_t set = forwarded_signals(), old;
        sigprocmask(SIG_BLOCK, &set, &old);
        sys::Fd sfd(signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
        if (!sfd) return fail_errno("signalfd");
        std::vector<int> fds = {0, 1, 2};
        fds.insert(fds.end(), extra.begin(), extra.end());
        auto sess = TRY(RelaySession::start(paths, req, fds));
        if (!o.pid_file.empty()) TRY(write_pid_file(o.pid_file, getpid()));
        int wst = sess.wait(sfd.get(), -1);
        sigprocmask(SIG_SETMASK, &old, nullptr);
        return wst;
    }

    std::optional<ConsoleSocket> own_console;
    std::string console = o.console_socket.empty() ? "" : TRY(absolute(o.console_socket));
    if (proc.terminal && console.empty()) {
        own_console = TRY(ConsoleSocket::create());
        console = own_console->path();
    }
    // Blocked before the relay exists, so that none is lost (a foreground
    // relay gets what we get).
    sigset_t fwd = forwarded_signals(), old_mask;
    sigprocmask(SIG_BLOCK, &fwd, &old_mask);
    struct Restore {
        sigset_t m;
        ~Restore() { sigprocmask(SIG_SETMASK, &m, nullptr); }
    } restore{old_mask};
    auto [rd, wr] = TRY(sys::pipe(O_CLOEXEC));
    pid_t child = ::fork();
    if (child < 0) return fail_errno("fork");
    if (child == 0) {
        rd.reset();
        relay_child(paths, req, proc.terminal, console, wr.release(), -1, extra);
    }
    wr.reset();
    if (auto r = proto::await_report(rd.get(), "exec relay died"); !r) {
        ::kill(child, SIGKILL);  // (one that said what it should not)
        ::waitpid(child, nullptr, 0);
        return tl::unexpected(r.error());
    }
    if (!o.pid_file.empty()) {
        if (auto r = write_pid_file(o.pid_file, child); !r) {
            ::kill(child, SIGKILL);
            ::waitpid(child, nullptr, 0);
            return tl::unexpected(r.error());
        }
    }
    if (o.detach) return 0;
    // Foreground, the terminal sent to the caller's --console-socket: the
    // caller shows it; we stand in for the process until it exits, as runc.
    if (!own_console) return wait_forwarding(child);
    // Foreground with a terminal: we show it.
    auto master = own_console->receive(10000);
    if (!master) {
        ::kill(child, SIGKILL);
        ::waitpid(child, nullptr, 0);
        return tl::unexpected(master.error());
    }
    return relay_terminal(master->get(), child);
}

}  // namespace husk
