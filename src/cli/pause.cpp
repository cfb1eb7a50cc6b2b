#include "cli/commands.h"

namespace husk::cli {

static void setup(CLI::App& sub, Globals& g, Handler& run, bool pause) {
    auto id = std::make_shared<std::string>();
    sub.description(pause ? "pause a container: its VM's vCPUs stop" : "resume a paused container");
    sub.add_option("id", *id, "container id")->required();
    sub.callback([&g, &run, id, pause] {
        run = [&g, id, pause] {
            auto r = pause_container(g, *id, pause);
            return r ? 0 : report(pause ? "pause" : "resume", *id, r.error());
        };
    });
}

void setup_pause(CLI::App& sub, Globals& g, Handler& run) { setup(sub, g, run, true); }
void setup_resume(CLI::App& sub, Globals& g, Handler& run) { setup(sub, g, run, false); }

}  // namespace husk::cli
