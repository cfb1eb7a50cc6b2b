// OCI hooks. On the host: prestart and createRuntime during `create`,
// poststart after `start`, poststop at the end of `delete`. In the guest
// (the agent links this file too): createContainer and startContainer.
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
// Run them all; returns the failures (poststart, poststop only warn).
std::vector<std::string> run_all_hooks(const std::vector<SpecHook>& hooks, const std::string& stage, const nlohmann::json& state);

}  // namespace husk
