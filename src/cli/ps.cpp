#include <cstdio>
#include <iostream>

#include "cli/commands.h"

namespace husk::cli {

// Guest processes have no host pids: husk prints the pids the container's
// own pid namespace gives them (runc prints host pids).
void setup_ps(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    auto format = std::make_shared<std::string>("table");
    sub.description("list the container's processes (pids as the container sees them)");
    sub.add_option("-f,--format", *format, "table or json")->check(CLI::IsMember({"table", "json"}));
    sub.add_option("id", *id, "container id")->required();
    sub.allow_extras();  // runc passes `-- ps options`; there is no host ps to give them to
    sub.callback([&g, &run, id, format] {
        run = [&g, id, format] {
            auto r = ps_container(g, *id);
            if (!r) return report("ps", *id, r.error());
            if (*format == "json") {
                nlohmann::json pids = nlohmann::json::array();
                for (auto& p : *r) pids.push_back(p["pid"]);
                std::cout << pids.dump() << "\n";
                return 0;
            }
            std::printf("%-8s %-8s %-6s %-2s %s\n", "PID", "PPID", "UID", "S", "CMD");
            for (auto& p : *r)
                std::printf("%-8d %-8d %-6d %-2s %s\n", p.value("pid", 0), p.value("ppid", 0), p.value("uid", 0),
                            p.value("state", "?").c_str(), p.value("cmd", "").c_str());
            return 0;
        };
    });
}

}  // namespace husk::cli
