#include "cli/app.h"

#include <sys/wait.h>
#include <unistd.h>

#include "husk/numbers.h"
#include "husk/version.h"
#include "sys/sys.h"

namespace husk::cli {

int report(const std::string& verb, const std::string& id, const Error& e) {
    log::error(verb + (id.empty() ? "" : " " + id) + ": " + e.message);
    return 1;
}

std::optional<double> scaled_number(const std::string& v, std::initializer_list<std::pair<const char*, double>> units) {
    size_t i = 0;
    while (i < v.size() && (std::isdigit(static_cast<unsigned char>(v[i])) || v[i] == '.')) ++i;
    if (i == 0) return std::nullopt;
    for (auto [suffix, factor] : units)
        if (v.compare(i, std::string::npos, suffix) == 0) {
            if (auto n = parse_double(std::string_view(v).substr(0, i))) return *n * factor;
            return std::nullopt;
        }
    return std::nullopt;
}

void exit_like(int wst) {
    if (WIFSIGNALED(wst)) sys::die_of_signal(WTERMSIG(wst));
    _exit(WEXITSTATUS(wst));
}

static const Command kCommands[] = {
    {"create", setup_create}, {"start", setup_start}, {"state", setup_state},
    {"kill", setup_kill},     {"delete", setup_delete}, {"run", setup_run},
    {"list", setup_list},     {"spec", setup_spec},     {"features", setup_features},
    {"exec", setup_exec},     {"pause", setup_pause},   {"resume", setup_resume},
    {"ps", setup_ps},         {"update", setup_update}, {"events", setup_events},
    {"check", setup_check},   {"templates", setup_templates}, {"checkpoint", setup_checkpoint},
    {"restore", setup_restore},
};

void build_app(CLI::App& app, AppState& s) {
    Globals& g = s.g;
    app.name("husk");
    app.description("husk: an OCI runtime that runs each container in its own virtual machine");
    app.require_subcommand(0, 1);
    app.set_version_flag("-v,--version",
                         std::string("husk version ") + HUSK_VERSION + "\nspec: " + HUSK_OCI_SPEC_VERSION);
    app.add_option("--root", g.root, "state directory")->capture_default_str();
    app.add_option("--log", g.log.path, "log file (errors and debug go here too)");
    app.add_option("--log-format", s.log_format, "text or json")->check(CLI::IsMember({"text", "json"}));
    app.add_flag("--debug", g.log.debug, "debug output, including the guest console");
    app.add_option("--hypervisor", g.hypervisor,
                   "VMM driver for new containers: auto (the default: husk picks per host and container), qemu, uml, "
                   "firecracker or cloud-hypervisor (annotation org.husk.hypervisor overrides)")
        ->envname("HUSK_HYPERVISOR");
    app.add_option("--annotation", g.annotations,
                   "KEY=VALUE: an annotation for the containers this creates, under their bundle's own (repeatable; "
                   "a docker runtime entry's runtimeArgs)")
        ->allow_extra_args(false);
    app.add_flag("--systemd-cgroup", g.systemd_cgroup, "cgroupsPath is slice:prefix:name (the shim and VMM go there)");
    for (const auto& c : kCommands) {
        auto* sub = app.add_subcommand(c.name);
        sub->fallthrough();
        c.setup(*sub, g, s.handler);
    }
}

std::vector<std::string> option_flags(const CLI::Option& o) {
    std::vector<std::string> out;
    for (const auto& n : o.get_snames()) out.push_back("-" + n);
    for (const auto& n : o.get_lnames()) out.push_back("--" + n);
    return out;
}

bool takes_existing_id(const CLI::App& sub) {
    const std::string& n = sub.get_name();
    if (n == "create" || n == "run" || n == "restore") return false;
    if (n == "exec") return true;  // its id is the first word of the command line it takes whole
    for (const auto* o : sub.get_options())
        if (o->get_name() == "id") return true;
    return false;
}

}  // namespace husk::cli
