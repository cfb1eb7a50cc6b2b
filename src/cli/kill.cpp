#include "cli/commands.h"
#include "husk/signals.h"

namespace husk::cli {

void setup_kill(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    auto sig = std::make_shared<std::string>("SIGTERM");
    auto all = std::make_shared<bool>(false);
    sub.description("send a signal (name or number, default SIGTERM) to the container");
    sub.add_option("id", *id, "container id")->required();
    sub.add_option("signal", *sig, "signal");
    sub.add_flag("-a,--all", *all, "signal every process in the container");
    sub.callback([&g, &run, id, sig, all] {
        run = [&g, id, sig, all] {
            // Signal 0 checks that the container is there, as runc's does.
            auto n = *sig == "0" ? Result<int>(0) : parse_signal(*sig);
            if (!n) return report("kill", *id, n.error());
            auto r = kill_container(g, *id, *n, *all);
            return r ? 0 : report("kill", *id, r.error());
        };
    });
}

}  // namespace husk::cli
