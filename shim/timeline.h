// A container's start as its shim sees it, for --debug: each step once,
// in milliseconds since the shim began ("VMM up 45 ms, kernel entered
// 310 ms, ..."). The guest's steps are the agent's own console lines
// ("husk-agent: started", "share mounted"), timed as they arrive; the
// console says them only under --debug, which is when this is printed.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "shim/session.h"

namespace husk::shim {

class Timeline {
public:
    void mark(const std::string& step) {
        if (!has(step)) steps_.emplace_back(step, ms_since(began_));
    }
    bool has(const std::string& step) const {
        for (const auto& s : steps_)
            if (s.first == step) return true;
        return false;
    }
    // A line of the agent's on the console: the steps it names.
    void console_line(const std::string& line) {
        if (line == "husk-agent: started") mark("agent started");
        else if (line == "husk-agent: share mounted") mark("share mounted");
        else if (line.rfind("husk-agent: attached to its container's host", 0) == 0) mark("attached");
    }
    std::string line() const {
        std::string out;
        for (const auto& [step, ms] : steps_) out += (out.empty() ? "" : ", ") + step + " " + std::to_string(ms) + " ms";
        return out;
    }

private:
    Clock::time_point began_ = Clock::now();
    std::vector<std::pair<std::string, long long>> steps_;
};

}  // namespace husk::shim
