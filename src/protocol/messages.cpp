#include "protocol/messages.h"

#include <cerrno>
#include <cstdint>
#include <initializer_list>

namespace husk::proto {

using nlohmann::json;

std::string to_hex(const std::string& bytes) {
    static const char* d = "0123456789abcdef";
    std::string out;
    out.reserve(bytes.size() * 2);
    for (unsigned char c : bytes) {
        out.push_back(d[c >> 4]);
        out.push_back(d[c & 15]);
    }
    return out;
}

Result<std::string> from_hex(const std::string& hex) {
    auto digit = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    if (hex.size() % 2) return fail("odd number of hex digits", EINVAL);
    std::string out;
    for (size_t i = 0; i < hex.size(); i += 2) {
        int hi = digit(hex[i]), lo = digit(hex[i + 1]);
        if (hi < 0 || lo < 0) return fail("not a hex digit", EINVAL);
        out.push_back(char(hi << 4 | lo));
    }
    return out;
}

// aa:bb:cc:dd:ee:ff, lower case (as the host's netlink reads a MAC).
static bool is_mac(const std::string& m) {
    if (m.size() != 17) return false;
    for (size_t i = 0; i < m.size(); ++i)
        if (i % 3 == 2 ? m[i] != ':' : !((m[i] >= '0' && m[i] <= '9') || (m[i] >= 'a' && m[i] <= 'f'))) return false;
    return true;
}

json to_json(const Attach& a) {
    json macs = json::array();
    for (const auto& [from, to] : a.macs) macs.push_back({from, to});
    return {{"share", a.share}, {"debug", a.debug}, {"entropy", to_hex(a.entropy)}, {"realtime_ns", a.realtime_ns},
            {"vcpus", a.vcpus}, {"macs", macs}};
}

Result<Attach> attach_from_json(const json& j) {
    auto bad = [](const std::string& what) { return fail("attach: " + what, EINVAL); };
    if (!j.is_object()) return bad("expected an object");
    for (const auto& [k, v] : j.items())
        if (k != "share" && k != "debug" && k != "entropy" && k != "realtime_ns" && k != "vcpus" && k != "macs")
            return bad("unknown key " + k);
    for (const char* k : {"share", "debug", "entropy", "realtime_ns", "vcpus", "macs"})
        if (!j.contains(k)) return bad(std::string("missing ") + k);
    auto natural = [](const json& v) { return v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0); };
    if (!j["share"].is_string() || !j["debug"].is_boolean() || !j["entropy"].is_string() || !natural(j["realtime_ns"]) ||
        !natural(j["vcpus"]) || !j["macs"].is_array())
        return bad("a field has the wrong type");
    Attach a;
    a.share = j["share"].get<std::string>();
    if (a.share != "9p" && a.share != "virtiofs" && a.share != "disk") return bad("unknown share \"" + a.share + "\"");
    a.debug = j["debug"].get<bool>();
    auto e = from_hex(j["entropy"].get<std::string>());
    if (!e) return bad("entropy: " + e.error().message);
    a.entropy = std::move(*e);
    if (a.entropy.size() < 32 || a.entropy.size() > 512) return bad("expected 32-512 bytes of entropy");
    a.realtime_ns = j["realtime_ns"].get<uint64_t>();
    uint64_t v = j["vcpus"].get<uint64_t>();
    if (v < 1 || v > 4096) return bad("vcpus out of range");
    a.vcpus = unsigned(v);
    if (j["macs"].size() > 64) return bad("more than 64 NICs");
    for (const auto& m : j["macs"]) {
        if (!m.is_array() || m.size() != 2 || !m[0].is_string() || !m[1].is_string() || !is_mac(m[0].get<std::string>()) ||
            !is_mac(m[1].get<std::string>()))
            return bad("macs: expected [template MAC, container MAC] pairs");
        a.macs.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    }
    return a;
}

json to_json(const Resumed& r) {
    json procs = json::array();
    for (const auto& p : r.procs) {
        json in = json::array();
        for (const auto& i : p.in) in.push_back({{"fd", i.fd}, {"buffered", i.buffered}});
        procs.push_back({{"process", p.process}, {"out", p.out}, {"in", in}, {"exited", p.exited}});
    }
    return {{"procs", procs}};
}

Result<Resumed> resumed_from_json(const json& j) {
    auto bad = [](const std::string& what) { return fail("resume: " + what, EPROTO); };
    auto u32 = [](const json& v) { return v.is_number_unsigned() && v.get<uint64_t>() <= UINT32_MAX; };
    auto only = [](const json& o, std::initializer_list<const char*> keys) {
        if (!o.is_object() || o.size() != keys.size()) return false;
        for (const char* k : keys)
            if (!o.contains(k)) return false;
        return true;
    };
    if (!only(j, {"procs"}) || !j["procs"].is_array() || j["procs"].size() > 4096) return bad("expected {\"procs\": [...]}");
    Resumed r;
    for (const auto& p : j["procs"]) {
        if (!only(p, {"process", "out", "in", "exited"}) || !u32(p["process"]) || !p["out"].is_array() || !p["in"].is_array() ||
            !p["exited"].is_boolean() || p["out"].size() > 256 || p["in"].size() > 256)
            return bad("a process entry is malformed");
        ResumedProc rp;
        rp.process = p["process"].get<uint32_t>();
        rp.exited = p["exited"].get<bool>();
        for (const auto& o : p["out"]) {
            if (!u32(o)) return bad("an output stream is malformed");
            rp.out.push_back(o.get<uint32_t>());
        }
        for (const auto& i : p["in"]) {
            if (!only(i, {"fd", "buffered"}) || !u32(i["fd"]) || !u32(i["buffered"])) return bad("an input stream is malformed");
            rp.in.push_back({i["fd"].get<uint32_t>(), i["buffered"].get<uint32_t>()});
        }
        r.procs.push_back(std::move(rp));
    }
    return r;
}

}  // namespace husk::proto
