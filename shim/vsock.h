#pragma once
#include <cstdint>

#include "husk/result.h"
#include "sys/fd.h"

namespace husk {

// One connection attempt to the guest agent over AF_VSOCK (vhost-vsock).
// Fails fast while the guest is still booting; the caller retries.
Result<sys::Fd> vsock_connect(uint32_t cid, uint32_t port);

}  // namespace husk
