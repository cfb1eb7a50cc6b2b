// Strict JSON decoding for the typed contracts of src/protocol: a value
// of the wrong type or range, a missing required key and an unknown key
// are each an error naming the field's path ("create.process.uid"), never
// a default. A struct's decoder is a `get(v, at, out)` overload found by
// argument-dependent lookup, so vectors, maps and optionals of it decode
// too:
//
//   Result<void> get(const json& v, const std::string& at, Mount& m) {
//       auto o = TRY(Object::of(v, at));
//       TRY(o.req("destination", m.destination));
//       TRY(o.opt("options", m.options));
//       return o.end();
//   }
#pragma once
#include <cerrno>
#include <concepts>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk::proto {

inline tl::unexpected<Error> bad_field(const std::string& at, const std::string& what) {
    return fail(at + ": " + what, EPROTO);
}

// (Declared first, so that each finds the others whatever the nesting.)
template <std::integral T>
    requires(!std::same_as<T, bool>)
Result<void> get(const nlohmann::json& v, const std::string& at, T& out);
template <class T>
Result<void> get(const nlohmann::json& v, const std::string& at, std::vector<T>& out);
template <class A, class B>
Result<void> get(const nlohmann::json& v, const std::string& at, std::pair<A, B>& out);
template <class T>
Result<void> get(const nlohmann::json& v, const std::string& at, std::map<std::string, T>& out);
template <class T>
Result<void> get(const nlohmann::json& v, const std::string& at, std::optional<T>& out);

inline Result<void> get(const nlohmann::json& v, const std::string& at, std::string& out) {
    if (!v.is_string()) return bad_field(at, "expected a string");
    out = v.get<std::string>();
    return {};
}

inline Result<void> get(const nlohmann::json& v, const std::string& at, bool& out) {
    if (!v.is_boolean()) return bad_field(at, "expected true or false");
    out = v.get<bool>();
    return {};
}

// An integer that fits T (a float, or one out of T's range, is an error).
template <std::integral T>
    requires(!std::same_as<T, bool>)
Result<void> get(const nlohmann::json& v, const std::string& at, T& out) {
    using L = std::numeric_limits<T>;
    if (v.is_number_integer()) {  // (unsigned too; not a float)
        if (v.is_number_unsigned() || v.get<int64_t>() >= 0) {
            if (v.get<uint64_t>() <= uint64_t(L::max())) {
                out = T(v.get<uint64_t>());
                return {};
            }
        } else if constexpr (L::is_signed) {
            if (v.get<int64_t>() >= int64_t(L::min())) {
                out = T(v.get<int64_t>());
                return {};
            }
        }
    }
    return bad_field(at, "expected an integer in " + std::to_string(L::min()) + ".." + std::to_string(L::max()));
}

// A number, integer or not (a figure: seconds, a percentage).
inline Result<void> get(const nlohmann::json& v, const std::string& at, double& out) {
    if (!v.is_number()) return bad_field(at, "expected a number");
    out = v.get<double>();
    return {};
}

// A JSON value carried as it is (a document of another contract: an OCI
// state for hooks to read).
inline Result<void> get(const nlohmann::json& v, const std::string&, nlohmann::json& out) {
    out = v;
    return {};
}

template <class T>
Result<void> get(const nlohmann::json& v, const std::string& at, std::vector<T>& out) {
    if (!v.is_array()) return bad_field(at, "expected an array");
    out.clear();
    out.reserve(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        T x{};
        TRY(get(v[i], at + "[" + std::to_string(i) + "]", x));
        out.push_back(std::move(x));
    }
    return {};
}

template <class A, class B>
Result<void> get(const nlohmann::json& v, const std::string& at, std::pair<A, B>& out) {
    if (!v.is_array() || v.size() != 2) return bad_field(at, "expected a pair [a, b]");
    TRY(get(v[0], at + "[0]", out.first));
    return get(v[1], at + "[1]", out.second);
}

template <class T>
Result<void> get(const nlohmann::json& v, const std::string& at, std::map<std::string, T>& out) {
    if (!v.is_object()) return bad_field(at, "expected an object");
    out.clear();
    for (const auto& [k, x] : v.items()) TRY(get(x, at + "." + k, out[k]));
    return {};
}

template <class T>
Result<void> get(const nlohmann::json& v, const std::string& at, std::optional<T>& out) {
    T x{};
    TRY(get(v, at, x));
    out = std::move(x);
    return {};
}

// An object's fields, each taken once; end() refuses the rest.
class Object {
public:
    static Result<Object> of(const nlohmann::json& v, std::string at) {
        if (!v.is_object()) return bad_field(at, "expected an object");
        return Object(v, std::move(at));
    }
    template <class T>
    Result<void> req(const char* key, T& out) {
        if (!v_->contains(key)) return bad_field(at_ + "." + key, "missing");
        return opt(key, out);
    }
    // Absent: `out` keeps its default.
    template <class T>
    Result<void> opt(const char* key, T& out) {
        seen_.insert(key);
        auto it = v_->find(key);
        if (it == v_->end()) return {};
        return get(*it, at_ + "." + key, out);
    }
    bool has(const char* key) const { return v_->contains(key); }
    Result<void> end() const {
        for (const auto& [k, x] : v_->items())
            if (!seen_.count(k)) return bad_field(at_ + "." + k, "unknown key");
        return {};
    }
    const std::string& at() const { return at_; }

private:
    Object(const nlohmann::json& v, std::string at) : v_(&v), at_(std::move(at)) {}
    const nlohmann::json* v_;
    std::string at_;
    std::set<std::string> seen_;
};

// A whole message: decode<Create>(params, "create").
template <class T>
Result<T> decode(const nlohmann::json& v, const std::string& at) {
    T out{};
    TRY(get(v, at, out));
    return out;
}

}  // namespace husk::proto
