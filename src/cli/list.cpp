#include <iomanip>
#include <iostream>

#include "cli/commands.h"

namespace husk::cli {

void setup_list(CLI::App& sub, Globals& g, Handler& run) {
    auto quiet = std::make_shared<bool>(false);
    auto format = std::make_shared<std::string>("table");
    sub.description("list containers");
    sub.add_flag("-q,--quiet", *quiet, "ids only");
    sub.add_option("-f,--format", *format, "table or json")->check(CLI::IsMember({"table", "json"}));
    sub.callback([&g, &run, quiet, format] {
        run = [&g, quiet, format] {
            auto list = list_containers(g);
            if (!list) return report("list", "", list.error());
            if (*quiet) {
                for (auto& s : *list) std::cout << s.id << "\n";
                return 0;
            }
            if (*format == "json") {
                auto arr = nlohmann::ordered_json::array();
                for (auto& s : *list) arr.push_back(runc_state(s));
                std::cout << arr.dump() << "\n";
                return 0;
            }
            auto row = [](const std::vector<std::string>& cols) {
                static const int w[] = {12, 10, 10, 40, 32};
                for (size_t i = 0; i < cols.size(); ++i) {
                    if (i + 1 < cols.size())
                        std::cout << std::left << std::setw(std::max<int>(w[i], int(cols[i].size()) + 3)) << cols[i];
                    else std::cout << cols[i];
                }
                std::cout << "\n";
            };
            row({"ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"});
            for (auto& s : *list) {
                auto j = oci_state(s);
                row({s.id, std::to_string(j["pid"].get<int>()), j["status"], s.bundle, s.created, s.owner});
            }
            return 0;
        };
    });
}

}  // namespace husk::cli
