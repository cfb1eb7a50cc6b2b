// husk templates: the VM templates this host keeps (husk/vm_template.h),
// listed or dropped. Not a runc command: runc has no VMs to keep.
#include <ctime>
#include <iomanip>
#include <iostream>

#include "cli/commands.h"
#include "husk/vm_template.h"

namespace husk::cli {

// The guest memory a template's QEMU argv gives it (the line after "-m").
static std::string memory_of(const std::string& shape) {
    auto at = shape.find("\n-m\n");
    if (at == std::string::npos) return "";
    at += 4;
    auto e = shape.find_first_of(",\n", at);
    return shape.substr(at, e - at) + " MiB";
}

void setup_templates(CLI::App& sub, Globals&, Handler& run) {
    sub.description("list (default) or remove the saved VM templates");
    sub.require_subcommand(0, 1);
    auto format = std::make_shared<std::string>("table");
    auto* ls = sub.add_subcommand("list", "list the templates: key, size, last use, memory");
    ls->add_option("-f,--format", *format, "table or json")->check(CLI::IsMember({"table", "json"}));
    auto* rm = sub.add_subcommand("rm", "remove templates by key (or --all); containers that use them go on");
    auto keys = std::make_shared<std::vector<std::string>>();
    auto all = std::make_shared<bool>(false);
    rm->add_option("key", *keys, "template keys (husk templates list)");
    rm->add_flag("-a,--all", *all, "every template");
    auto do_list = [format] {
        auto d = templates::dir();
        auto entries = templates::list(d);
        if (*format == "json") {
            auto arr = nlohmann::json::array();
            for (const auto& e : entries)
                arr.push_back({{"key", e.key}, {"path", e.state}, {"bytes", e.bytes}, {"used", e.used}, {"shape", e.shape}});
            std::cout << nlohmann::json{{"dir", d}, {"templates", arr}}.dump(2) << "\n";
            return 0;
        }
        std::cout << std::left << std::setw(35) << "KEY" << std::setw(10) << "SIZE" << std::setw(22) << "LAST USED"
                  << "MEMORY\n";
        for (const auto& e : entries) {
            char when[32];
            time_t t = time_t(e.used);
            std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", std::gmtime(&t));
            std::cout << std::setw(35) << e.key << std::setw(10) << (std::to_string(e.bytes >> 20) + " MiB") << std::setw(22)
                      << when << memory_of(e.shape) << "\n";
        }
        return 0;
    };
    sub.callback([&run, ls, rm, keys, all, do_list] {
        if (rm->parsed()) {
            run = [keys, all] {
                auto d = templates::dir();
                if (*all == !keys->empty()) return report("templates rm", "", Error{EINVAL, "give template keys, or --all"});
                std::vector<std::string> drop = *keys;
                if (*all)
                    for (const auto& e : templates::list(d)) drop.push_back(e.key);
                int rc = 0;
                for (const auto& k : drop) {
                    bool known = false;
                    for (const auto& e : templates::list(d)) known |= e.key == k;
                    if (!known) {
                        rc = report("templates rm", k, Error{ENOENT, "no such template in " + d});
                        continue;
                    }
                    templates::remove(d, k);
                }
                return rc;
            };
            return;
        }
        (void)ls;
        run = do_list;
    });
}

}  // namespace husk::cli
