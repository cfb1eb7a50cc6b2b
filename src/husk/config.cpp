#include "husk/config.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <string_view>

// Header-only and without exceptions: only this file parses TOML.
#define TOML_HEADER_ONLY 1
#define TOML_EXCEPTIONS 0
#include <toml++/toml.h>

#include "husk/paths.h"
#include "sys/sys.h"

namespace husk {

std::string config_path() {
    if (const char* p = ::getenv("HUSK_CONFIG"); p && *p) return p;
    if (!rootless()) return "/etc/husk/config.toml";
    return user_dir("XDG_CONFIG_HOME", ".config") + "/husk/config.toml";
}

// husk's config is a flat list of `key = "text"`, `key = 'text'` or
// `key = true|false` lines, in plain ASCII, with comments: a subset of
// TOML, checked here before toml++ sees the text. toml++ 3.3 (Debian
// 12's) aborts on some malformed input (assertions in parse_key, as on
// "[{": marzer/tomlplusplus#301, fixed upstream in 2026, and in
// parse_value inside nested arrays) and reaches __builtin_unreachable on
// some non-ASCII input (a byte-order mark); the fuzz_files target found
// all three. What passes here is regular enough for it, and toml++ still
// does the parsing proper (escapes, duplicate keys).
static Result<void> plain_keys(const std::string& text, const std::string& origin) {
    size_t line = 1;
    for (size_t at = 0; at <= text.size(); ++line) {
        size_t end = text.find('\n', at);
        if (end == std::string::npos) end = text.size();
        std::string_view l(text.data() + at, end - at);
        at = end + 1;
        auto bad = [&](const std::string& what) {
            return fail(origin + ":" + std::to_string(line) + ": " + what +
                            " (husk's config takes key = \"text\", key = 'text' or key = true|false, in plain ASCII)",
                        EINVAL);
        };
        for (unsigned char c : l)
            if ((c < 0x20 && c != '\t' && c != '\r') || c >= 0x7f) return bad("a byte " + std::to_string(c));
        size_t i = 0;
        auto ws = [&] {
            while (i < l.size() && (l[i] == ' ' || l[i] == '\t' || l[i] == '\r')) ++i;
        };
        auto rest_is_comment = [&] {
            ws();
            return i == l.size() || l[i] == '#';
        };
        if (rest_is_comment()) continue;
        if (l[i] == '[') return bad("a table");
        size_t key = i;
        while (i < l.size() && (std::isalnum(static_cast<unsigned char>(l[i])) || l[i] == '_' || l[i] == '-')) ++i;
        if (i == key) return bad("not a key");
        ws();
        if (i == l.size() || l[i] != '=') return bad("no '=' after the key");
        ++i;
        ws();
        if (i < l.size() && (l[i] == '"' || l[i] == '\'')) {
            char q = l[i++];
            while (i < l.size() && l[i] != q) i += (q == '"' && l[i] == '\\') ? 2 : 1;
            if (i >= l.size()) return bad("an unterminated string");
            ++i;
        } else if (l.substr(i, 4) == "true") {
            i += 4;
        } else if (l.substr(i, 5) == "false") {
            i += 5;
        } else {
            return bad("not a string or a bool");
        }
        if (!rest_is_comment()) return bad("more after the value");
    }
    return {};
}

Result<Config> parse_config(const std::string& text, const std::string& origin) {
    TRY(plain_keys(text, origin));
    auto parsed = toml::parse(text, origin);
    if (!parsed) {
        const auto& e = parsed.error();
        std::ostringstream m;
        m << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": " << e.description();
        return fail(m.str(), EINVAL);
    }
    Config c;
    for (const auto& [key, node] : parsed.table()) {
        std::string k(key.str());
        if (k == "hypervisor") {
            auto v = node.value<std::string>();
            if (!v) return fail(origin + ": hypervisor: expected a string", EINVAL);
            c.hypervisor = *v;
        } else if (k == "share") {
            auto v = node.value<std::string>();
            if (!v || (*v != "virtiofs" && *v != "9p")) return fail(origin + ": share: expected \"virtiofs\" or \"9p\"", EINVAL);
            c.share = *v;
        } else if (k == "templates") {
            auto v = node.value<bool>();
            if (!v || !node.is_boolean()) return fail(origin + ": templates: expected true or false", EINVAL);
            c.templates = *v;
        } else {
            return fail(origin + ": unknown key \"" + k + "\"", EINVAL);
        }
    }
    return c;
}

Result<Config> load_config() {
    std::string path = config_path();
    auto text = sys::read_file(path, 1 << 20);
    if (!text) {
        if (text.error().code == ENOENT) return Config{};
        return tl::unexpected(text.error().context("config"));
    }
    return parse_config(*text, path);
}

}  // namespace husk
