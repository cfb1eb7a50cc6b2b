#include "cli/commands.h"

namespace husk::cli {

void add_create_flags(CLI::App& sub, CreateOptions& o) {
    sub.add_option("-b,--bundle", o.bundle, "bundle directory (holds config.json)");
    sub.add_option("--pid-file", o.pid_file, "write the container's (shim's) pid here");
    sub.add_option("--console-socket", o.console_socket, "unix socket to receive the pty master");
    sub.add_option("--preserve-fds", o.preserve_fds, "pass N extra fds (from 3) to the container");
    // runc flags that have no meaning in a VM; accepted so callers work.
    sub.add_flag("--no-pivot")->description("accepted for compatibility");
    sub.add_flag("--no-new-keyring")->description("accepted for compatibility");
}

void setup_create(CLI::App& sub, Globals& g, Handler& run) {
    auto o = std::make_shared<CreateOptions>();
    auto id = std::make_shared<std::string>();
    sub.description("create a container (its VM boots; the process waits for start)");
    add_create_flags(sub, *o);
    sub.add_option("id", *id, "container id")->required();
    sub.callback([&g, &run, o, id] {
        run = [&g, o, id] {
            auto r = create_container(g, *id, *o);
            return r ? 0 : report("create", *id, r.error());
        };
    });
}

}  // namespace husk::cli
