#pragma once
#include <string>

#include "husk/result.h"

namespace husk {

// "TERM", "SIGTERM", "sigterm", "15", "RTMIN+3" -> signal number.
Result<int> parse_signal(const std::string& s);
// 15 -> "SIGTERM"
std::string signal_name(int sig);

}  // namespace husk
