// Numbers from text, without exceptions: the whole string in the base
// given, and a value that fits T; nullopt for anything else ("", " 1",
// "+1", "1x", "1.5" for an integer, out of range). One form for every
// parse of a figure husk reads (flags, cgroup files, annotations, /proc).
#pragma once
#include <charconv>
#include <concepts>
#include <optional>
#include <string_view>
#include <system_error>

namespace husk {

template <std::integral T>
std::optional<T> parse_number(std::string_view s, int base = 10) {
    T v{};
    if (s.empty()) return std::nullopt;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, base);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return v;
}

inline std::optional<double> parse_double(std::string_view s) {
    double v = 0;
    if (s.empty()) return std::nullopt;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return v;
}

}  // namespace husk
