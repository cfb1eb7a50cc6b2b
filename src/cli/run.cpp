#include "cli/commands.h"

namespace husk::cli {

void add_create_flags(CLI::App& sub, CreateOptions& o);

void setup_run(CLI::App& sub, Globals& g, Handler& run) {
    auto o = std::make_shared<CreateOptions>();
    auto id = std::make_shared<std::string>();
    auto detach = std::make_shared<bool>(false);
    auto keep = std::make_shared<bool>(false);
    sub.description("create and start a container, and wait for it unless --detach");
    add_create_flags(sub, *o);
    sub.add_flag("-d,--detach", *detach, "return once started");
    sub.add_flag("--keep", *keep, "do not delete the container after it exits");
    sub.add_option("id", *id, "container id")->required();
    sub.callback([&g, &run, o, id, detach, keep] {
        run = [&g, o, id, detach, keep]() -> int {
            auto r = run_container(g, *id, *o, *detach, *keep);
            if (!r) return report("run", *id, r.error());
            if (*detach) return 0;
            exit_like(*r);
        };
    });
}

}  // namespace husk::cli
