// husk <-> husk-shim: one request per connection to <state>/shim.sock,
// one reply (protocol/control.h).
#pragma once
#include "husk/paths.h"
#include "husk/result.h"
#include "protocol/control.h"

namespace husk {

// The reply when the shim says ok; its refusal as the error otherwise.
Result<proto::ControlReply> shim_call(const StatePaths& p, const proto::ControlRequest& req, int timeout_ms);

}  // namespace husk
