// husk-agent: static PID 1 of the guest. Mounts, loads modules, finds its
// channel (boot.cpp), then serves the shim (supervisor.h) until the VM goes.
#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include "guest-agent/boot.h"
#include "guest-agent/supervisor.h"
#include "sys/sys.h"

using namespace husk;
using namespace husk::agent;

int main() {
    signal(SIGPIPE, SIG_IGN);
    if (getpid() == 1) {
        if (auto r = early_init(); !r) fatal(r.error().message);
        sys::ensure_std_fds();  // the initramfs has no /dev/console: 0-2 start closed
    }
    // SCHED_BATCH: a process's pipe write does not preempt it for us, so
    // the writer fills the pipe and we read it in big pieces (under TCG a
    // context switch flushes the soft TLB). When the guest is otherwise
    // idle, as it is between requests, we still run at once. The
    // container's processes are reset to SCHED_OTHER when we fork them.
    sched_param sp{};
    (void)sched_setscheduler(0, SCHED_BATCH | SCHED_RESET_ON_FORK, &sp);
    auto boot = boot_params();
    if (!boot) fatal(boot.error().message);
    g_debug = boot->debug;
    const std::string& kind = boot->channel;
    auto chan = kind == "vsock"               ? open_vsock_channel()
                : kind.rfind("tty", 0) == 0   ? open_tty_channel(kind)
                                              : open_serial_channel();
    if (!chan) fatal(chan.error().message);
    say("channel open (" + (kind.empty() ? std::string("serial") : kind) + ")");
    if (template_boot() && kind != "vsock" && kind.rfind("tty", 0) != 0) {
        if (auto l = listen_vsock_for_clones(); !l) say("template: no vsock listener for clones: " + l.error().message);
    }
    auto pidns = sys::open("/proc/self/ns/pid", O_RDONLY);
    if (!pidns) fatal(pidns.error().message);
    Agent a(std::move(*chan), std::move(*pidns), kind.rfind("tty", 0) == 0);
    auto r = a.run();
    fatal(r ? "agent loop ended" : r.error().message);
}

