#include "hypervisors/http.h"

#include <poll.h>
#include <unistd.h>

#include <chrono>
#include <strings.h>

#include "sys/sys.h"

namespace husk::http {

std::string format_request(const std::string& method, const std::string& path, const std::string& body) {
    std::string r = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n";
    if (!body.empty()) r += "Content-Type: application/json\r\n";
    r += "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
    return r + body;
}

std::optional<Result<Response>> parse_response(std::string_view buf, bool eof) {
    size_t head_end = buf.find("\r\n\r\n");
    if (head_end == std::string_view::npos) {
        if (buf.size() > kMaxHeader) return fail("http: response header too large", EPROTO);
        if (eof) return fail("http: connection closed before a response", ECONNRESET);
        return std::nullopt;
    }
    std::string_view head = buf.substr(0, head_end);
    size_t eol = head.find("\r\n");
    std::string_view status_line = head.substr(0, eol);
    // "HTTP/1.x NNN reason"
    if (status_line.size() < 12 || status_line.substr(0, 7) != "HTTP/1." || status_line[8] != ' ')
        return fail("http: malformed status line", EPROTO);
    Response r;
    for (size_t i = 9; i < 12; ++i) {
        if (status_line[i] < '0' || status_line[i] > '9') return fail("http: malformed status line", EPROTO);
        r.status = r.status * 10 + (status_line[i] - '0');
    }
    if (r.status < 100) return fail("http: malformed status line", EPROTO);
    std::optional<size_t> length;
    size_t pos = eol == std::string_view::npos ? head.size() : eol + 2;
    while (pos < head.size()) {
        size_t e = head.find("\r\n", pos);
        if (e == std::string_view::npos) e = head.size();
        std::string_view line = head.substr(pos, e - pos);
        pos = e + 2;
        size_t colon = line.find(':');
        if (colon == std::string_view::npos) return fail("http: malformed header", EPROTO);
        std::string name(line.substr(0, colon));
        std::string_view value = line.substr(colon + 1);
        while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
        while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
        if (strcasecmp(name.c_str(), "Content-Length") == 0) {
            if (value.empty() || value.size() > 9) return fail("http: bad Content-Length", EPROTO);
            size_t n = 0;
            for (char c : value) {
                if (c < '0' || c > '9') return fail("http: bad Content-Length", EPROTO);
                n = n * 10 + size_t(c - '0');
            }
            length = n;
        } else if (strcasecmp(name.c_str(), "Transfer-Encoding") == 0) {
            return fail("http: chunked responses are not supported", EPROTO);
        }
    }
    std::string_view rest = buf.substr(head_end + 4);
    bool bodiless = r.status == 204 || r.status == 304 || r.status < 200;
    if (bodiless) return r;
    if (length) {
        if (*length > kMaxBody) return fail("http: response body too large", EPROTO);
        if (rest.size() < *length) {
            if (eof) return fail("http: connection closed inside the body", ECONNRESET);
            return std::nullopt;
        }
        r.body = std::string(rest.substr(0, *length));
        return r;
    }
    if (rest.size() > kMaxBody) return fail("http: response body too large", EPROTO);
    if (!eof) return std::nullopt;
    r.body = std::string(rest);
    return r;
}

Result<Response> request(const std::string& socket, const std::string& method, const std::string& path,
                         const std::string& body, int timeout_ms) {
    auto s = TRY(sys::unix_connect(socket));
    TRY(sys::write_all(s.get(), format_request(method, path, body)));
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    std::string buf;
    bool eof = false;
    for (;;) {
        if (auto r = parse_response(buf, eof)) return std::move(*r);
        int left = sys::ms_left(deadline);
        if (left <= 0 || !TRY(sys::wait_fd(s.get(), POLLIN, left))) return fail("http: no response", ETIMEDOUT);
        char tmp[4096];
        ssize_t n = ::read(s.get(), tmp, sizeof tmp);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) return fail_errno("http: read");
        if (n == 0) eof = true;
        buf.append(tmp, size_t(n > 0 ? n : 0));
    }
}

}  // namespace husk::http
