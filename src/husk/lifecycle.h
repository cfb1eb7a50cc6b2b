// The runc lifecycle, hypervisor-neutral: what each subcommand does, for
// the thin CLI in src/cli/ to call.
#pragma once
#include <sys/types.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/log.h"
#include "husk/result.h"
#include "husk/state.h"

namespace husk {

struct Globals {
    std::string root = "/run/husk";
    log::Config log;
};

struct CreateOptions {
    std::string bundle = ".";
    std::string pid_file;
    std::string console_socket;
    int preserve_fds = 0;
};

// Fork the shim and return once the container is created (or failed,
// leaving nothing behind). Returns the shim's pid, which is our child.
Result<pid_t> create_container(const Globals& g, const std::string& id, const CreateOptions& o);
Result<void> start_container(const Globals& g, const std::string& id);
Result<void> kill_container(const Globals& g, const std::string& id, int sig, bool all);
Result<void> delete_container(const Globals& g, const std::string& id, bool force);
// create + start + (unless detach) wait and mirror the exit status.
// Returns a wait status for the CLI to reproduce.
Result<int> run_container(const Globals& g, const std::string& id, const CreateOptions& o, bool detach, bool keep);
Result<State> load_state(const Globals& g, const std::string& id);
Result<std::vector<State>> list_containers(const Globals& g);

}  // namespace husk
