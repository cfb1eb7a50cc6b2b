// The whole husk command line, defined once: the husk binary parses with
// it, and husk-clidoc (build time only) walks it to write the bash
// completion, and the unit tests hold the manual pages to it.
#pragma once
#include <string>
#include <vector>

#include "cli/commands.h"

namespace husk::cli {

struct AppState {
    Globals g;
    std::string log_format = "text";
    Handler handler;
};

// Defines husk's options and subcommands on `app`; what they set lands
// in `s` (which must outlive `app`).
void build_app(CLI::App& app, AppState& s);

// Subcommands of `app` that callers complete a container id for: those
// that act on an existing container (not create, run, restore, which
// name a new one).
bool takes_existing_id(const CLI::App& sub);

// An option's flags as a user types them: "-b", "--bundle".
std::vector<std::string> option_flags(const CLI::Option& o);

}  // namespace husk::cli
