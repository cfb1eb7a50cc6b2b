#include "husk/config.h"

#include <cerrno>
#include <cstdlib>
#include <sstream>

// Header-only and without exceptions: only this file parses TOML.
#define TOML_HEADER_ONLY 1
#define TOML_EXCEPTIONS 0
#include <toml++/toml.h>

#include "husk/paths.h"
#include "sys/sys.h"

namespace husk {

std::string config_path() {
    if (const char* p = ::getenv("HUSK_CONFIG"); p && *p) return p;
    if (!rootless()) return "/etc/husk/config.toml";
    return user_dir("XDG_CONFIG_HOME", ".config") + "/husk/config.toml";
}

Result<Config> parse_config(const std::string& text, const std::string& origin) {
    auto parsed = toml::parse(text, origin);
    if (!parsed) {
        const auto& e = parsed.error();
        std::ostringstream m;
        m << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
        return fail(m.str(), EINVAL);
    }
    Config c;
    for (const auto& [key, node] : parsed.table()) {
        std::string k(key.str());
        if (k == "hypervisor") {
            auto v = node.value<std::string>();
            if (!v) return fail(origin + ": hypervisor: expected a string", EINVAL);
            c.hypervisor = *v;
        } else if (k == "share") {
            auto v = node.value<std::string>();
            if (!v || (*v != "virtiofs" && *v != "9p")) return fail(origin + ": share: expected \"virtiofs\" or \"9p\"", EINVAL);
            c.share = *v;
        } else if (k == "templates") {
            auto v = node.value<bool>();
            if (!v || !node.is_boolean()) return fail(origin + ": templates: expected true or false", EINVAL);
            c.templates = *v;
        } else {
            return fail(origin + ": unknown key \"" + k + "\"", EINVAL);
        }
    }
    return c;
}

Result<Config> load_config() {
    std::string path = config_path();
    auto text = sys::read_file(path, 1 << 20);
    if (!text) {
        if (text.error().code == ENOENT) return Config{};
        return tl::unexpected(text.error().context("config"));
    }
    return parse_config(*text, path);
}

}  // namespace husk
