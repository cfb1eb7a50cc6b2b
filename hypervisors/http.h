// A minimal HTTP/1.1 client over a unix socket, for the VMMs that are
// driven through a REST API (Firecracker, Cloud Hypervisor). One request
// per connection; JSON bodies; Content-Length framing only.
#pragma once
#include <optional>
#include <string>
#include <string_view>

#include "husk/result.h"

namespace husk::http {

struct Response {
    int status = 0;
    std::string body;
};

inline constexpr size_t kMaxHeader = 64 * 1024;
inline constexpr size_t kMaxBody = 1024 * 1024;

// The request's bytes. A non-empty body is sent as application/json.
std::string format_request(const std::string& method, const std::string& path, const std::string& body);
// A response from the bytes read so far: nullopt while it is incomplete
// (`eof`: the server closed, so a body without a length ends here). Pure.
std::optional<Result<Response>> parse_response(std::string_view buf, bool eof);
// Send one request to the server at the unix socket `socket`.
Result<Response> request(const std::string& socket, const std::string& method, const std::string& path,
                         const std::string& body, int timeout_ms);

}  // namespace husk::http
