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
    // runc: `ps ID [ps options]` (default -ef), the options often after
    // `--`: everything after the id is ps's, in order, dashes and all.
    // CLI11 keeps the dashed ones as extras and the rest (and all after
    // `--`) as positionals: extras first keeps "-o pid" in its order.
    auto words = std::make_shared<std::vector<std::string>>();
    sub.add_option("ps-options", *words, "ps options (default -ef)");
    sub.fallthrough(false);  // (-e is not husk's)
    sub.allow_extras();
    sub.footer("ps options: -e, -A, -f (default -ef) or BSD a, u, x");
    sub.callback([&g, &run, &sub, id, format, words] {
        std::vector<std::string> ps_opts = sub.remaining();
        ps_opts.insert(ps_opts.end(), words->begin(), words->end());
        std::erase(ps_opts, std::string("--"));
        run = [&g, id, format, ps_opts] {
            if (auto ok = check_ps_options(ps_opts); !ok && *format != "json") return report("ps", *id, ok.error());
            auto r = ps_container(g, *id);
            if (!r) return report("ps", *id, r.error());
            if (*format == "json") {
                nlohmann::json pids = nlohmann::json::array();
                for (const auto& p : *r) pids.push_back(p.pid);
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
