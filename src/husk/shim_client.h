// husk <-> husk-shim: one newline-terminated JSON request per connection
// to <state>/shim.sock, one JSON reply {"ok":bool,"error":"..."}.
#pragma once
#include <nlohmann/json.hpp>

#include "husk/paths.h"
#include "husk/result.h"

namespace husk {

Result<nlohmann::json> shim_call(const StatePaths& p, const nlohmann::json& req, int timeout_ms);

}  // namespace husk
