#include <iostream>

#include "cli/commands.h"

namespace husk::cli {

void setup_state(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    sub.description("print the OCI state of a container");
    sub.add_option("id", *id, "container id")->required();
    sub.callback([&g, &run, id] {
        run = [&g, id] {
            auto s = load_state(g, *id);
            if (!s) return report("state", *id, s.error());
            std::cout << runc_state(*s).dump(2) << "\n";
            return 0;
        };
    });
}

}  // namespace husk::cli
