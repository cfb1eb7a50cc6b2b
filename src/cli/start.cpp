#include "cli/commands.h"

namespace husk::cli {

void setup_start(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    sub.description("start the process of a created container");
    sub.add_option("id", *id, "container id")->required();
    sub.callback([&g, &run, id] {
        run = [&g, id] {
            auto r = start_container(g, *id);
            return r ? 0 : report("start", *id, r.error());
        };
    });
}

}  // namespace husk::cli
