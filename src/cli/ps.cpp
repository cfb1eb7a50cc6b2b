#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "husk/ps.h"

namespace husk::cli {

// Guest processes have no host pids: husk prints the pids the container's
// own pid namespace gives them (runc prints host pids).
void setup_ps(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    auto format = std::make_shared<std::string>("table");
    sub.description("list the container's processes (pids as the container sees them)");
    sub.add_option("-f,--format", *format, "table or json")->check(CLI::IsMember({"table", "json"}));
    sub.add_option("id", *id, "container id")->required();
    // runc: `ps ID [ps options]` (default -ef), the options often after `--`.
    auto opts = std::make_shared<std::vector<std::string>>();
    sub.add_option("ps-options", *opts, "ps options (default -ef)");
    sub.fallthrough(false);  // ps's own options stay here (-e is not husk's)
    sub.allow_extras();
    sub.prefix_command();    // what follows the id is ps's, dashes and all
    sub.callback([&g, &run, &sub, id, format, opts] {
        std::vector<std::string> ps_opts = *opts;
        for (const auto& e : sub.remaining()) ps_opts.push_back(e);
        std::erase(ps_opts, std::string("--"));
        run = [&g, id, format, ps_opts] {
            auto r = ps_container(g, *id);
            if (!r) return report("ps", *id, r.error());
            if (*format == "json") {
                nlohmann::json pids = nlohmann::json::array();
                for (auto& p : *r) pids.push_back(p["pid"]);
                std::cout << pids.dump() << "\n";
                return 0;
            }
            auto text = format_ps(*r, ps_opts, ::time(nullptr));
            if (!text) return report("ps", *id, text.error());
            std::cout << *text;
            return 0;
        };
    });
}

}  // namespace husk::cli
