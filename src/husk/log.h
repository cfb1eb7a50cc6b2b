// Logging for husk and husk-shim: errors always to stderr (CLI) and to
// --log in text or JSON (runc/logrus shape: {"level","msg","time"}), which
// containerd and conmon read back on failure.
#pragma once
#include <string>

namespace husk::log {

enum class Format { Text, Json };
enum class Level { Debug, Info, Warn, Error };

struct Config {
    std::string path;  // empty: no log file
    Format format = Format::Text;
    bool debug = false;
    bool to_stderr = true;  // the shim's stderr belongs to the container
    std::string prefix = "husk";
};

void init(const Config& c);
const Config& config();
void write(Level lvl, const std::string& msg);
inline void debug(const std::string& m) { write(Level::Debug, m); }
inline void info(const std::string& m) { write(Level::Info, m); }
inline void warn(const std::string& m) { write(Level::Warn, m); }
inline void error(const std::string& m) { write(Level::Error, m); }
// A long step a user waits on (a KVM probe, a template's first boot): one
// line on stderr when it is a terminal, nothing when it is not (a client's
// pipe, a log); under --debug, a debug line.
void progress(const std::string& m);

}  // namespace husk::log
