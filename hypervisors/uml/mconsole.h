// UML's management console: one datagram per request on the socket UML
// makes at <uml_dir>/<umid>/mconsole, replies back to our bound address.
#pragma once
#include <cstdint>
#include <string>

#include "husk/result.h"

namespace husk::uml {

inline constexpr uint32_t kMconsoleMagic = 0xcafebabe;
inline constexpr uint32_t kMconsoleVersion = 2;
inline constexpr size_t kMconsoleMaxData = 512;

// The request datagram for `command` (at most kMconsoleMaxData - 1 bytes).
Result<std::string> mconsole_request(const std::string& command);

// One reply datagram: its text, and whether more follow.
struct MconsoleReply {
    uint32_t err = 0;
    bool more = false;
    std::string data;
};
Result<MconsoleReply> mconsole_parse_reply(const char* buf, size_t n);

// Send `command`, gather the whole reply. A non-zero err is an error
// carrying UML's text.
Result<std::string> mconsole_command(const std::string& socket_path, const std::string& command, int timeout_ms);

}  // namespace husk::uml
