#include "husk/checkpoint.h"

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <vector>

#include <nlohmann/json.hpp>

#include "sys/sys.h"

namespace husk::checkpoint {

using nlohmann::json;

constexpr int kVersion = 1;

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
    for (const char* f : {kInfoFile, kStateFile, kDiskFile})
        if (!sys::exists(dir + "/" + f))
            return fail("checkpoint image " + dir + " is not one husk checkpoint wrote (no " + f + ")", ENOENT);
    auto text = TRY_CTX(sys::read_file(dir + "/" + kInfoFile, 1 << 20), "checkpoint image");
    return TRY_CTX(info_from_json(text), "checkpoint image " + dir);
}

}  // namespace husk::checkpoint
