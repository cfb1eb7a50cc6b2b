#include "cli/commands.h"

namespace husk::cli {

void setup_exec(CLI::App& sub, Globals& g, Handler& run) {
    auto o = std::make_shared<ExecOptions>();
    sub.description("run a process in a running container: exec [flags] ID [COMMAND [ARG...]]");
    sub.add_option("-p,--process", o->process_file, "an OCI process object (JSON) to run instead of COMMAND");
    auto* tty = sub.add_flag("-t,--tty", o->tty, "give the process a terminal");
    sub.add_flag("-d,--detach", o->detach, "return once started; --pid-file names a process that exits with it");
    sub.add_option("--pid-file", o->pid_file, "write the pid that stands for the process here");
    sub.add_option("--console-socket", o->console_socket, "unix socket to receive the pty master");
    sub.add_option("--cwd", o->cwd, "working directory");
    sub.add_option("-e,--env", o->env, "KEY=VALUE to set (repeatable)")->allow_extra_args(false);
    sub.add_option("-u,--user", o->user, "UID[:GID]");
    sub.add_option("-g,--additional-gids", o->additional_gids, "additional group ids (repeatable)")->allow_extra_args(false);
    sub.add_flag("--no-new-privs", o->no_new_privs, "set no_new_privs");
    sub.add_option("--preserve-fds", o->preserve_fds, "pass N extra fds (from 3)");
    sub.add_flag("--ignore-paused", o->ignore_paused, "exec even if the container is paused");
    // runc flags with nothing to act on in the guest; accepted so callers work.
    sub.add_option("--process-label", "accepted for compatibility (no SELinux in the guest)");
    sub.add_option("--apparmor", "accepted for compatibility (no AppArmor in the guest)");
    sub.add_option("--cgroup", "accepted for compatibility");
    // Everything after the id is the command, its own flags included.
    sub.prefix_command();
    sub.allow_extras();
    sub.fallthrough(false);
    sub.callback([&g, &run, &sub, o, tty] {
        o->tty_set = tty->count() > 0;
        auto rest = sub.remaining();
        run = [&g, o, rest]() -> int {
            if (rest.empty()) {
                log::error("exec: container id required");
                return 1;
            }
            std::string id = rest[0];
            o->args.assign(rest.begin() + 1, rest.end());
            if (!o->args.empty() && o->args[0] == "--") o->args.erase(o->args.begin());
            auto r = exec_container(g, id, *o);
            if (!r) {
                report("exec", id, r.error());
                return 255;  // as runc: the process never ran
            }
            exit_like(*r);
        };
    });
}

}  // namespace husk::cli
