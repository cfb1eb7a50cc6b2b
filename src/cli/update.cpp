#include <cctype>
#include <iostream>
#include <sstream>

#include "cli/commands.h"
#include "husk/numbers.h"
#include "husk/spec.h"
#include "sys/sys.h"

namespace husk::cli {

// runc's memory sizes: "-1", bytes, or a number with b/k/m/g/t (and an
// optional trailing "b" or "ib"), powers of 1024.
static Result<int64_t> parse_size(const std::string& flag, const std::string& v) {
    if (v == "-1") return -1;
    std::string lower;
    for (char c : v) lower += char(std::tolower(static_cast<unsigned char>(c)));
    constexpr double K = 1024, M = K * K, G = M * K, T = G * K;
    if (auto n = scaled_number(lower, {{"", 1}, {"b", 1}, {"k", K}, {"kb", K}, {"kib", K}, {"m", M}, {"mb", M},
                                        {"mib", M}, {"g", G}, {"gb", G}, {"gib", G}, {"t", T}, {"tb", T}, {"tib", T}}))
        return int64_t(*n);
    return fail("--" + flag + ": invalid size \"" + v + "\"", EINVAL);
}

void setup_update(CLI::App& sub, Globals& g, Handler& run) {
    struct Opts {
        std::string id, resources;
        std::map<std::string, std::string> sizes;  // flag -> value
        std::map<std::string, std::string> numbers;
        std::string cpus, mems;
    };
    auto o = std::make_shared<Opts>();
    sub.description("change a running container's resource limits (its guest cgroup)");
    sub.add_option("id", o->id, "container id")->required();
    sub.add_option("-r,--resources", o->resources, "a LinuxResources JSON file (\"-\": stdin); flags override it");
    for (const char* f : {"memory", "memory-reservation", "memory-swap", "kernel-memory", "kernel-memory-tcp"})
        sub.add_option_function<std::string>(std::string("--") + f, [o, f](const std::string& v) { o->sizes[f] = v; },
                                             "bytes, or with a k/m/g suffix");
    for (const char* f : {"cpu-period", "cpu-quota", "cpu-share", "cpu-rt-period", "cpu-rt-runtime", "pids-limit",
                          "blkio-weight", "cpu-idle"})
        sub.add_option_function<std::string>(std::string("--") + f, [o, f](const std::string& v) { o->numbers[f] = v; });
    sub.add_option("--cpuset-cpus", o->cpus, "CPUs allowed, e.g. 0-1");
    sub.add_option("--cpuset-mems", o->mems, "memory nodes allowed");
    sub.add_option("--l3-cache-schema", "accepted for compatibility (no Intel RDT in the guest)");
    sub.add_option("--mem-bw-schema", "accepted for compatibility (no Intel RDT in the guest)");
    sub.callback([&g, &run, o] {
        run = [&g, o]() -> int {
            nlohmann::json res = nlohmann::json::object();
            if (!o->resources.empty()) {
                auto text = o->resources == "-" ? sys::read_to_eof(0, 1 << 20) : sys::read_file(o->resources, 1 << 20);
                if (!text) return report("update", o->id, text.error().context("--resources"));
                auto r = parse_resources_file(*text, o->resources == "-" ? "stdin" : o->resources);
                if (!r) return report("update", o->id, r.error());
                res = *r;
            }
            static const std::map<std::string, std::pair<const char*, const char*>> where = {
                {"memory", {"memory", "limit"}},         {"memory-reservation", {"memory", "reservation"}},
                {"memory-swap", {"memory", "swap"}},     {"kernel-memory", {"memory", "kernel"}},
                {"kernel-memory-tcp", {"memory", "kernelTCP"}}, {"cpu-period", {"cpu", "period"}},
                {"cpu-quota", {"cpu", "quota"}},         {"cpu-share", {"cpu", "shares"}},
                {"cpu-rt-period", {"cpu", "realtimePeriod"}}, {"cpu-rt-runtime", {"cpu", "realtimeRuntime"}},
                {"pids-limit", {"pids", "limit"}},       {"blkio-weight", {"blockIO", "weight"}},
                {"cpu-idle", {"cpu", "idle"}},
            };
            for (auto& [f, v] : o->sizes) {
                auto n = parse_size(f, v);
                if (!n) return report("update", o->id, n.error());
                res[where.at(f).first][where.at(f).second] = *n;
            }
            for (auto& [f, v] : o->numbers) {
                auto parsed = parse_number<int64_t>(v);
                if (!parsed) return report("update", o->id, Error{EINVAL, "--" + f + ": invalid number \"" + v + "\""});
                int64_t n = *parsed;
                bool is_unsigned = f == "cpu-period" || f == "cpu-share" || f == "cpu-rt-period" || f == "blkio-weight";
                if (is_unsigned && n < 0)
                    return report("update", o->id, Error{EINVAL, "--" + f + ": must not be negative"});
                auto& slot = res[where.at(f).first][where.at(f).second];
                slot = is_unsigned ? nlohmann::json(uint64_t(n)) : nlohmann::json(n);
            }
            if (!o->cpus.empty()) res["cpu"]["cpus"] = o->cpus;
            if (!o->mems.empty()) res["cpu"]["mems"] = o->mems;
            auto r = update_container(g, o->id, res);
            if (!r) return report("update", o->id, r.error());
            for (const auto& w : *r) log::warn("update " + o->id + ": " + w);
            return 0;
        };
    });
}

}  // namespace husk::cli
