// OCI hooks that run on the host: prestart and createRuntime during
// `create`, poststart after `start`, poststop at the end of `delete`.
// Each gets the container's state JSON on stdin, its own args and env
// (nothing inherited), and its timeout.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "husk/spec.h"

namespace husk {

// Run hooks in order; the first failure stops them and is returned:
// "prestart hook /path: exit status 3: <its output>".
Result<void> run_hooks(const std::vector<SpecHook>& hooks, const std::string& stage, const nlohmann::json& state);
// Run them all; failures are logged as warnings (poststart, poststop).
void run_hooks_warn(const std::vector<SpecHook>& hooks, const std::string& stage, const nlohmann::json& state);

}  // namespace husk
