#include "husk/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "husk/state.h"

namespace husk::log {

static Config g;

void init(const Config& c) { g = c; }
const Config& config() { return g; }

static const char* name(Level l) {
    switch (l) {
        case Level::Debug: return "debug";
        case Level::Info: return "info";
        case Level::Warn: return "warning";
        case Level::Error: return "error";
    }
    return "info";
}

void write(Level lvl, const std::string& msg) {
    if (lvl == Level::Debug && !g.debug) return;
    if (g.to_stderr && (lvl >= Level::Warn || g.debug)) {
        std::string line = g.prefix + ": " + (lvl == Level::Error ? "" : std::string(name(lvl)) + ": ") + msg + "\n";
        (void)!::write(2, line.data(), line.size());
    }
    if (g.path.empty()) return;
    std::string line;
    if (g.format == Format::Json) {
        line = nlohmann::json{{"level", name(lvl)}, {"msg", msg}, {"time", now_rfc3339()}}.dump(
                   -1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    } else {
        line = "time=\"" + now_rfc3339() + "\" level=" + name(lvl) + " msg=" + nlohmann::json(msg).dump(
                   -1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    int fd = ::open(g.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    (void)!::write(fd, line.data(), line.size());
    ::close(fd);
}

}  // namespace husk::log
