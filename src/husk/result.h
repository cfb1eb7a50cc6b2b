// Errors as values: every fallible call returns Result<T>, an errno plus a
// message that grows context as it climbs ("create web: start vm: ...").
#pragma once
#include <cerrno>
#include <cstring>
#include <string>
#include <tl/expected.hpp>
#include <utility>

namespace husk {

struct Error {
    int code = 0;       // errno, or 0 when the cause is not a syscall
    std::string message;

    // Prefix the message with what we were doing: "start vm: <message>".
    Error& context(const std::string& what) {
        message = what + ": " + message;
        return *this;
    }
};

// [[nodiscard]]: a Result dropped on the floor is a compile error (with
// -Werror); the installed tl::expected (1.0) is not marked. Write
// `(void)call()` where an error truly does not matter, and say why.
template <typename T = void>
class [[nodiscard]] Result : public tl::expected<T, Error> {
public:
    using tl::expected<T, Error>::expected;
    Result(tl::expected<T, Error>&& e) : tl::expected<T, Error>(std::move(e)) {}
    Result(const tl::expected<T, Error>& e) : tl::expected<T, Error>(e) {}
};

inline tl::unexpected<Error> fail(std::string msg, int code = 0) {
    return tl::unexpected(Error{code, std::move(msg)});
}

// A failed syscall: "<what>: <strerror(errno)>", capturing errno now.
inline tl::unexpected<Error> fail_errno(const std::string& what, int err = errno) {
    return tl::unexpected(Error{err, what + ": " + std::strerror(err)});
}

template <typename T>
Result<T> with_context(Result<T> r, const std::string& what) {
    if (!r) r.error().context(what);
    return r;
}

namespace detail {
template <typename T>
T unwrap(Result<T>&& r) { return std::move(*r); }
inline void unwrap(Result<void>&&) {}
}  // namespace detail

}  // namespace husk

// Propagate an error to the caller; yields the value otherwise (GNU
// statement expression, as SerenityOS's TRY).
#define TRY(expr)                                                        \
    ({                                                                   \
        auto _husk_r = (expr);                                           \
        if (!_husk_r) return tl::unexpected(std::move(_husk_r.error())); \
        ::husk::detail::unwrap(std::move(_husk_r));                      \
    })

// Same, adding "<ctx>: " in front of the message.
#define TRY_CTX(expr, ctx)                                               \
    ({                                                                   \
        auto _husk_r = (expr);                                           \
        if (!_husk_r) {                                                  \
            _husk_r.error().context(ctx);                                \
            return tl::unexpected(std::move(_husk_r.error()));           \
        }                                                                \
        ::husk::detail::unwrap(std::move(_husk_r));                      \
    })
