#include <chrono>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "husk/cgroups.h"

namespace husk::cli {

// Go-style durations as runc takes them: "5s", "500ms", "1m", "1.5s".
static Result<std::chrono::milliseconds> parse_interval(const std::string& v) {
    auto ms = scaled_number(v, {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}});
    if (!ms || *ms <= 0) return fail("--interval: invalid duration \"" + v + "\" (use e.g. 5s or 500ms)", EINVAL);
    return std::chrono::milliseconds(int64_t(*ms));
}

void setup_events(CLI::App& sub, Globals& g, Handler& run) {
    auto id = std::make_shared<std::string>();
    auto interval = std::make_shared<std::string>("5s");
    auto stats = std::make_shared<bool>(false);
    sub.description("print the container's stats every interval, and OOM kills as they happen, as JSON lines");
    sub.add_option("id", *id, "container id")->required();
    sub.add_option("--interval", *interval, "stats interval (default 5s)");
    sub.add_flag("--stats", *stats, "print the stats once and exit");
    sub.callback([&g, &run, id, interval, stats] {
        run = [&g, id, interval, stats]() -> int {
            auto every = parse_interval(*interval);
            if (!every) return report("events", *id, every.error());
            auto first = stats_container(g, *id);
            if (!first) return report("events", *id, first.error());
            auto emit = [&](const char* type, const nlohmann::ordered_json& data) {
                nlohmann::ordered_json e = {{"type", type}, {"id", *id}};  // runc's order
                if (!data.is_null()) e["data"] = data;
                std::cout << e.dump() << std::endl;
            };
            if (*stats) {
                emit("stats", runc_stats(*first));
                return 0;
            }
            // OOM kills are seen by polling the group's counter at least
            // once a second; stats go out every interval.
            auto tick = std::min(*every, std::chrono::milliseconds(1000));
            uint64_t ooms = oom_kills(*first);
            auto next_stats = std::chrono::steady_clock::now();
            proto::CgroupStats files = *first;
            for (;;) {
                if (uint64_t n = oom_kills(files); n > ooms) {
                    for (; ooms < n; ++ooms) emit("oom", nullptr);
                }
                if (std::chrono::steady_clock::now() >= next_stats) {
                    emit("stats", runc_stats(files));
                    next_stats += *every;
                }
                std::this_thread::sleep_for(tick);
                auto r = stats_container(g, *id);
                if (r) {
                    files = *r;
                    continue;
                }
                // Paused: the guest answers again after resume. Otherwise
                // the container stopped, and so do its events.
                auto st = load_state(g, *id);
                if (!st || effective_status(*st) != status::kPaused) return 0;
            }
        };
    });
}

}  // namespace husk::cli
