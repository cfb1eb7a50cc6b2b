// husk's own configuration file: defaults for what the command line does
// not say. Strict, as our own input is (unknown keys and wrong types are
// errors); a missing file is all defaults.
#pragma once
#include <optional>
#include <string>

#include "husk/result.h"

namespace husk {

struct Config {
    std::string hypervisor;  // the driver for new containers ("" = built-in default)
    std::string share;       // "virtiofs" or "9p" (choose_share_fs); "" = the default
    std::optional<bool> templates;  // VM templates (vm_template.h); unset = on
};

// $HUSK_CONFIG, else /etc/husk/config.toml (rootless:
// $XDG_CONFIG_HOME/husk/config.toml, or ~/.config/husk/config.toml).
std::string config_path();
Result<Config> parse_config(const std::string& text, const std::string& origin);
Result<Config> load_config();

}  // namespace husk
