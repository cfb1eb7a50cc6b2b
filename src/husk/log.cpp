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

// logrus's text form, as runc writes it: time="..." level=debug msg="..."
static std::string text_line(Level lvl, const std::string& msg) {
    return "time=\"" + now_rfc3339() + "\" level=" + name(lvl) + " msg=" +
           nlohmann::json(msg).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

void write(Level lvl, const std::string& msg) {
    if (lvl == Level::Debug && !g.debug) return;
    // With --log, debug lines go there alone (runc's way): stderr may be
    // the container's.
    if (g.to_stderr && (lvl >= Level::Warn || (g.debug && g.path.empty()))) {
        // An error is the one line that names the container, the step and
        // the cause; under --debug the rest reads as runc's debug output.
        std::string line = lvl == Level::Error ? g.prefix + ": " + msg + "\n"
                           : g.debug           ? text_line(lvl, msg)
                                               : g.prefix + ": " + name(lvl) + ": " + msg + "\n";
        (void)!::write(2, line.data(), line.size());
    }
    if (g.path.empty()) return;
    std::string line;
    if (g.format == Format::Json) {
        line = nlohmann::json{{"level", name(lvl)}, {"msg", msg}, {"time", now_rfc3339()}}.dump(
                   -1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    } else {
        line = text_line(lvl, msg);
    }
    int fd = ::open(g.path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    (void)!::write(fd, line.data(), line.size());
    ::close(fd);
}

void progress(const std::string& m) {
    if (g.debug) return write(Level::Debug, m);
    if (!g.to_stderr || !::isatty(2)) return;
    std::string line = g.prefix + ": " + m + "\n";
    (void)!::write(2, line.data(), line.size());
}

}  // namespace husk::log
