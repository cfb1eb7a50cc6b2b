// husk run and husk checkpoint: the lifecycle's steps put together (create,
// start, wait, delete; save, then delete), as runc's run and checkpoint are.
// The steps themselves are lifecycle.cpp's and running.cpp's.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <optional>

#include "husk/checkpoint.h"
#include "husk/console.h"
#include "husk/defaults.h"
#include "husk/lifecycle.h"
#include "husk/log.h"
#include "husk/shim_client.h"
#include "husk/signals.h"
#include "husk/spec.h"
#include "sys/sys.h"

namespace husk {

// The shim's figures of a save, as CRIU's stats-dump.
static Result<void> write_dump_stats(const std::string& dir, const nlohmann::json& s) {
    TRY(sys::mkdir_p(dir, 0700));
    return sys::write_file(dir + "/" + checkpoint::kDumpStatsFile, checkpoint::criu_dump_stats(checkpoint::stats_from_json(s)), 0600);
}

Result<void> checkpoint_container(const Globals& g, const std::string& id, const std::string& image_path,
                                  const std::string& work_path, bool leave_running) {
    TRY(validate_id(id));
    auto paths = state_paths(g.root, id);
    State st;
    {
        auto lock = TRY(ContainerLock::acquire(paths));
        st = TRY(load_state(g, id));
        if (!st.sandbox.empty()) return fail("checkpoint: it is a pod's member: its VM holds other containers too", EINVAL);
        std::string s = effective_status(st);
        if (s != status::kRunning) return fail("checkpoint: container is not running: " + s, EINVAL);
        std::string dir = TRY(absolute(image_path));
        TRY_CTX(sys::mkdir_p(dir, 0700), "--image-path");
        log::debug("checkpoint " + id + " into " + dir + (leave_running ? " (leaving it running)" : ""));
        proto::ControlRequest req{.op = proto::Op::Checkpoint, .image_path = dir, .leave_running = leave_running};
        auto r = TRY(shim_call(shim_route(g, st, req), req, 180000));
        if (auto w = write_dump_stats(work_path.empty() ? dir : TRY(absolute(work_path)), r.stats.value_or(nlohmann::json())); !w)
            log::warn("checkpoint: " + w.error().message);
    }
    if (leave_running) return {};
    // Its shim stops the VM and itself; the container goes, as runc's does.
    sys::wait_process_exit(st.pid, st.pid_start, std::chrono::milliseconds(defaults::kStopTimeoutMs));
    return delete_container(g, id, true);
}

Result<int> run_container(const Globals& g, const std::string& id, const CreateOptions& o, bool detach, bool keep) {
    // Signals that arrive while we run go to the container; block them
    // now so none is lost between create and the wait loop.
    sigset_t fwd = forwarded_signals(), old;
    if (!detach) sigprocmask(SIG_BLOCK, &fwd, &old);
    // A terminal in the foreground: we show it, through our own console socket.
    CreateOptions co = o;
    std::optional<ConsoleSocket> console;
    if (!detach && co.console_socket.empty()) {
        std::string bundle = TRY_CTX(sys::realpath(o.bundle.empty() ? "." : o.bundle), "bundle");
        if (auto spec = load_spec(bundle); spec && spec->process && spec->process->terminal) {
            console = TRY(ConsoleSocket::create());
            co.console_socket = console->path();
        }
    }
    auto began = std::chrono::steady_clock::now();
    pid_t shim = TRY(create_container(g, id, co));
    if (!o.restore_from.empty()) {
        // Restored and running: CRIU's stats-restore says how long it took.
        checkpoint::RestoreStats rs;
        rs.restore_us = uint32_t(std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - began).count());
        struct stat sst{};
        if (::stat((o.restore_from + "/" + checkpoint::kStateFile).c_str(), &sst) == 0) rs.pages_restored = uint64_t(sst.st_size) / 4096;
        std::string dir = o.restore_work.empty() ? o.restore_from : o.restore_work;
        if (auto w = sys::write_file(dir + "/" + checkpoint::kRestoreStatsFile, checkpoint::criu_restore_stats(rs), 0600); !w)
            log::warn("restore: " + w.error().message);
    }
    sys::Fd master;
    if (console) {
        auto m = console->receive(10000);
        if (m) master = std::move(*m);
        // Our size before start: the shim gives the guest the pty's size
        // as `start` goes out, and the program may look at once.
        if (master) copy_winsize(0, master.get());
    }
    // (A restored container is running already.)
    auto started = console && !master             ? tl::unexpected(Error{EIO, "no terminal from the shim"})
                   : !o.restore_from.empty()      ? Result<void>()
                                                  : start_container(g, id);
    if (!started) {
        (void)delete_container(g, id, true);
        ::waitpid(shim, nullptr, 0);
        return tl::unexpected(started.error());
    }
    if (detach) return 0;
    int wst = 0;
    if (master) {
        auto r = relay_terminal(master.get(), shim);
        if (!keep) (void)delete_container(g, id, true);
        sigprocmask(SIG_SETMASK, &old, nullptr);
        return r;
    }
    wst = wait_forwarding(shim);
    if (!keep) (void)delete_container(g, id, true);
    sigprocmask(SIG_SETMASK, &old, nullptr);
    return wst;
}

}  // namespace husk
