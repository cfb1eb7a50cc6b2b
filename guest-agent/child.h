// What runs in the agent's cloned child before execve: building the
// container's filesystem (mounts.cpp), becoming its process (process.cpp),
// and the two entry points that use them (container.cpp, container.h).
// Every function here runs between clone and exec: an error ends the
// child with "E<message>" on its sync socket (die), never an exception.
#pragma once
#include <sys/types.h>
#include <unistd.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "guest-agent/container.h"
#include "husk/result.h"
#include "sys/sys.h"

namespace husk::agent {

// The child's end: "E<msg>" for the agent, then exit.
[[noreturn]] inline void die(int sync_fd, const std::string& msg) {
    std::string m = "E" + msg;
    (void)!::write(sync_fd, m.data(), m.size());
    _exit(1);
}

// TRY for the child: an error is the child's end (needs `sync_fd` in scope).
#define CHECK(expr)                                    \
    ({                                                 \
        auto _r = (expr);                              \
        if (!_r) die(sync_fd, _r.error().message);     \
        ::husk::detail::unwrap(std::move(_r));         \
    })

// mounts.cpp
// A tmpfs, and anything mounted at /dev, is mounted writable first (as
// runc's mountPropagate does): a tmpfs gets its mode and copy-up, /dev its
// nodes and the mounts under it. A tmpfs elsewhere goes read-only right
// after; /dev once the rest of it is built (`dev_ro`: the flags to
// remount it with).
Result<void> do_mount(int root, const proto::Mount& m, unsigned long& dev_ro);
// What runc puts in a tmpfs /dev: the standard nodes and links.
Result<void> populate_dev();
// linux.devices: the nodes the spec asks for.
Result<void> make_devices(const std::vector<proto::Device>& devices);
// maskedPaths and readonlyPaths, as runc applies them.
Result<void> mask_path(const std::string& p);
Result<void> readonly_path(const std::string& p);

// process.cpp
// execvp's search, but with the container's PATH, done before start so a
// missing binary fails `create` as runc's does.
Result<std::string> find_executable(const std::string& arg0, const std::vector<std::string>& env);
// The signal mask and dispositions the agent set, back to the defaults.
void reset_signals();
// What every process of the container goes through once it is inside the
// container's namespaces and root: stdio (pipes, or a pty from the
// container's own devpts), credentials, cwd, then "R" (with the pty master
// attached), wait for "S", execve.
// `start_hooks`: startContainer's, with the state they read.
struct StartHooks {
    std::vector<SpecHook> hooks;
    nlohmann::json state;
};
// `console`: the init's terminal, opened by container_init (it is the
// container's /dev/console); else a terminal is opened here.
[[noreturn]] void run_process(const proto::Process& proc, const std::optional<proto::Seccomp>& seccomp, int sync_fd,
                              const Stdio& io, const std::optional<StartHooks>& start_hooks = std::nullopt,
                              std::optional<sys::Pty> console = std::nullopt);

}  // namespace husk::agent
