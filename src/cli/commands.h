// One file per subcommand; each registers itself into the CLI11 app and
// returns the handler to run if it was chosen.
#pragma once
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "husk/lifecycle.h"

namespace husk::cli {

using Handler = std::function<int()>;

struct Command {
    const char* name;
    void (*setup)(CLI::App& sub, Globals& g, Handler& run);
};

void setup_create(CLI::App&, Globals&, Handler&);
void setup_start(CLI::App&, Globals&, Handler&);
void setup_state(CLI::App&, Globals&, Handler&);
void setup_kill(CLI::App&, Globals&, Handler&);
void setup_delete(CLI::App&, Globals&, Handler&);
void setup_run(CLI::App&, Globals&, Handler&);
void setup_list(CLI::App&, Globals&, Handler&);
void setup_spec(CLI::App&, Globals&, Handler&);
void setup_features(CLI::App&, Globals&, Handler&);
void setup_exec(CLI::App&, Globals&, Handler&);
void setup_pause(CLI::App&, Globals&, Handler&);
void setup_resume(CLI::App&, Globals&, Handler&);
void setup_ps(CLI::App&, Globals&, Handler&);
void setup_update(CLI::App&, Globals&, Handler&);
void setup_events(CLI::App&, Globals&, Handler&);
void setup_check(CLI::App&, Globals&, Handler&);
void setup_templates(CLI::App&, Globals&, Handler&);
void setup_checkpoint(CLI::App&, Globals&, Handler&);
void setup_restore(CLI::App&, Globals&, Handler&);

// Print "<verb> <id>: <message>" to stderr and --log; returns 1.
int report(const std::string& verb, const std::string& id, const Error& e);
// A number followed by one of `units` (suffix -> factor), as runc's flags
// take sizes ("512m") and durations ("500ms"); nothing if it is neither.
std::optional<double> scaled_number(const std::string& v, std::initializer_list<std::pair<const char*, double>> units);
// Exit with a wait status: same code, or die of the same signal.
[[noreturn]] void exit_like(int wait_status);

}  // namespace husk::cli
