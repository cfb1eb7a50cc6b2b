#include <iostream>

#include "cli/commands.h"
#include "husk/spec.h"
#include "sys/sys.h"

namespace husk::cli {

void setup_spec(CLI::App& sub, Globals&, Handler& run) {
    auto bundle = std::make_shared<std::string>(".");
    sub.description("write a default config.json, as runc spec does");
    sub.add_option("-b,--bundle", *bundle, "directory to write config.json in");
    sub.callback([&run, bundle] {
        run = [bundle] {
            std::string path = *bundle + "/config.json";
            if (sys::exists(path)) return report("spec", "", Error{EEXIST, "File " + path + " exists. Remove it first"});
            auto r = sys::write_file(path, default_spec().dump(2) + "\n", 0644);
            return r ? 0 : report("spec", "", r.error());
        };
    });
}

}  // namespace husk::cli
