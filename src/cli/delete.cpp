#include "cli/commands.h"

namespace husk::cli {

void setup_delete(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    auto force = std::make_shared<bool>(false);
    sub.description("delete a container and everything it holds (VM, shares, state)");
    sub.add_option("id", *id, "container id")->required();
    sub.add_flag("-f,--force", *force, "kill it first if it is running");
    sub.callback([&g, &run, id, force] {
        run = [&g, id, force] {
            auto r = delete_container(g, *id, *force);
            return r ? 0 : report("delete", *id, r.error());
        };
    });
}

}  // namespace husk::cli
