#include "husk/checkpoint.h"

#include <sys/stat.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "sys/sys.h"

namespace husk::checkpoint {

using nlohmann::json;

constexpr int kVersion = 1;

std::string criu_inventory() {
    // INVENTORY_MAGIC 0x58313116, little-endian; entry size 2; field 1
    // (img_version) varint 2.
    return std::string("\x16\x31\x31\x58\x02\x00\x00\x00\x08\x02", 10);
}

namespace {

// Protocol buffers' wire format, the little of it CRIU's stats need.
void varint(std::string& out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back(char((v & 0x7f) | 0x80));
        v >>= 7;
    }
    out.push_back(char(v));
}
void field(std::string& out, unsigned num, uint64_t v) {
    varint(out, uint64_t(num) << 3);  // wire type 0: varint
    varint(out, v);
}
std::string stats_image(unsigned which, const std::string& entry) {
    std::string stats;  // StatsEntry: dump = 1, restore = 2
    varint(stats, uint64_t(which) << 3 | 2);
    varint(stats, entry.size());
    stats += entry;
    std::string out("\x40\x59\x10\x55\x06\x33\x09\x57", 8);  // IMG_SERVICE_MAGIC, STATS_MAGIC
    uint32_t n = uint32_t(stats.size());
    for (int i = 0; i < 4; ++i) out.push_back(char(n >> (8 * i)));
    return out + stats;
}

}  // namespace

nlohmann::json stats_to_json(const DumpStats& s) {
    return {{"freezing_us", s.freezing_us}, {"frozen_us", s.frozen_us},   {"memdump_us", s.memdump_us},
            {"memwrite_us", s.memwrite_us}, {"pages_written", s.pages_written}};
}

DumpStats stats_from_json(const nlohmann::json& j) {
    auto u = [&](const char* k) { return j.is_object() && j.contains(k) && j[k].is_number_unsigned() ? j[k].get<uint64_t>() : 0; };
    DumpStats s;
    s.freezing_us = uint32_t(u("freezing_us")), s.frozen_us = uint32_t(u("frozen_us")), s.memdump_us = uint32_t(u("memdump_us"));
    s.memwrite_us = uint32_t(u("memwrite_us")), s.pages_written = u("pages_written");
    return s;
}

std::string criu_dump_stats(const DumpStats& s) {
    std::string e;  // DumpStatsEntry
    field(e, 1, s.freezing_us);
    field(e, 2, s.frozen_us);
    field(e, 3, s.memdump_us);
    field(e, 4, s.memwrite_us);
    field(e, 5, s.pages_written);  // pages_scanned
    field(e, 6, 0);                // pages_skipped_parent
    field(e, 7, s.pages_written);
    field(e, 9, 0);                // pages_lazy
    return stats_image(1, e);
}

std::string criu_restore_stats(const RestoreStats& s) {
    std::string e;  // RestoreStatsEntry
    field(e, 1, 0);  // pages_compared
    field(e, 2, 0);  // pages_skipped_cow
    field(e, 3, 0);  // forking_time
    field(e, 4, s.restore_us);
    field(e, 5, s.pages_restored);
    return stats_image(2, e);
}

std::string info_to_json(const Info& i) {
    return json{{"husk_checkpoint", kVersion}, {"hypervisor", i.hypervisor}, {"protocol", i.protocol}, {"vm_shape", i.vm_shape},
                {"id", i.id},                 {"terminal", i.terminal},     {"saved", i.saved}}
        .dump(2) + "\n";
}

Result<Info> info_from_json(const std::string& text) {
    auto bad = [](const std::string& what) { return fail(std::string(kInfoFile) + ": " + what, EINVAL); };
    json j = json::parse(text, nullptr, false);
    if (!j.is_object()) return bad("not a JSON object");
    if (!j.contains("husk_checkpoint") || !j["husk_checkpoint"].is_number_integer()) return bad("not a husk checkpoint");
    if (j["husk_checkpoint"].get<int64_t>() != kVersion)
        return bad("a checkpoint of version " + j["husk_checkpoint"].dump() + ", this husk reads " + std::to_string(kVersion));
    for (const auto& [k, v] : j.items())
        if (k != "husk_checkpoint" && k != "hypervisor" && k != "protocol" && k != "vm_shape" && k != "id" && k != "terminal" &&
            k != "saved")
            return bad("unknown key " + k);
    for (const char* k : {"hypervisor", "vm_shape", "id"})
        if (!j.contains(k) || !j[k].is_string()) return bad(std::string("missing or not a string: ") + k);
    if (!j.contains("terminal") || !j["terminal"].is_boolean()) return bad("missing or not a bool: terminal");
    if (!j.contains("saved") || !j["saved"].is_number_integer()) return bad("missing or not a number: saved");
    if (!j.contains("protocol") || !j["protocol"].is_number_unsigned() || j["protocol"].get<uint64_t>() > UINT32_MAX)
        return bad("missing or not a number: protocol");
    Info i;
    i.hypervisor = j["hypervisor"];
    i.vm_shape = j["vm_shape"];
    i.id = j["id"];
    i.terminal = j["terminal"];
    i.saved = j["saved"];
    i.protocol = j["protocol"].get<uint32_t>();
    if (i.hypervisor.empty() || i.vm_shape.empty()) return bad("empty hypervisor or vm_shape");
    return i;
}

std::string first_difference(const std::string& saved, const std::string& now) {
    auto lines = [](const std::string& t) {
        std::vector<std::string> out;
        for (size_t pos = 0; pos <= t.size();) {
            size_t e = t.find('\n', pos);
            if (e == std::string::npos) e = t.size();
            out.push_back(t.substr(pos, e - pos));
            pos = e + 1;
        }
        return out;
    };
    auto a = lines(saved), b = lines(now);
    auto shown = [](const std::vector<std::string>& v, size_t i) {
        return i >= v.size() || v[i].empty() ? std::string("(nothing)") : "\"" + v[i].substr(0, 200) + "\"";
    };
    for (size_t i = 0; i < std::max(a.size(), b.size()); ++i)
        if (i >= a.size() || i >= b.size() || a[i] != b[i]) return "it was saved with " + shown(a, i) + " where this one has " + shown(b, i);
    return "they differ";
}

Result<Info> read_image(const std::string& dir) {
    if (!sys::is_dir(dir)) return fail("checkpoint image " + dir + " does not exist", ENOENT);
    for (const char* f : {kInfoFile, kStateFile, kDiskFile}) {
        // Regular files only: a symlink would have the shim (root) copy
        // whatever it names into the container's disk.
        struct stat st{};
        if (::lstat((dir + "/" + f).c_str(), &st) < 0)
            return fail("checkpoint image " + dir + " is not one husk checkpoint wrote (no " + f + ")", ENOENT);
        if (!S_ISREG(st.st_mode)) return fail("checkpoint image " + dir + ": " + f + " is not a regular file", EINVAL);
    }
    auto text = TRY_CTX(sys::read_file(dir + "/" + kInfoFile, 1 << 20), "checkpoint image");
    return TRY_CTX(info_from_json(text), "checkpoint image " + dir);
}

}  // namespace husk::checkpoint
