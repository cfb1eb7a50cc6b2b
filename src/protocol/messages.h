// Typed messages of the shim <-> agent protocol (protocol.h carries them
// as REQUEST params): each a struct with one encoder and one strict
// decoder (an unknown key, a missing one or a wrong type is an error), so
// both ends read the same fields. The older requests are still built and
// read by hand (issue 25 moves them here one by one).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk::proto {

// "attach": a guest booted as a template (HELLO carried "template": true)
// becomes a container's VM. Sent once, first, by the template's maker
// after saving it and by every clone after restoring it.
struct Attach {
    std::string share;         // the share's filesystem: "9p", "virtiofs" or "disk" (ext4 on the first disk)
    bool debug = false;        // the agent's --debug lines on the console
    std::string entropy;       // random bytes for this guest alone (raw; hex on the wire)
    uint64_t realtime_ns = 0;  // the host's CLOCK_REALTIME
    unsigned vcpus = 1;        // vCPUs to bring online (the template booted with one)
    // NICs the template held (a VMM that cannot hot-plug them): each one's
    // MAC in the template, and the container's it takes on.
    std::vector<std::pair<std::string, std::string>> macs;
};
nlohmann::json to_json(const Attach& a);
Result<Attach> attach_from_json(const nlohmann::json& j);

// "quiesce" (no params, no result): a checkpoint's first step. From its
// answer on the agent sends nothing (no output read, no stdin written, no
// exit reported) until "resume" {"restored": bool}: the same shim goes on
// (--leave-running, or a checkpoint that failed), or a new shim on a copy
// of the VM restored from the checkpoint, which is told what is still
// open: the agent's send credit starts again at the full window, and the
// shim's stdin credit is the window less what the agent still holds.
struct ResumedInput {
    uint32_t fd = 0;
    uint32_t buffered = 0;  // bytes received, not yet written to the process
};
struct ResumedProc {
    uint32_t process = 0;
    std::vector<uint32_t> out;       // output streams still open
    std::vector<ResumedInput> in;    // input streams still open
    bool exited = false;             // its exit is still to be reported
};
struct Resumed {
    std::vector<ResumedProc> procs;  // empty unless restored
};
nlohmann::json to_json(const Resumed& r);
Result<Resumed> resumed_from_json(const nlohmann::json& j);

std::string to_hex(const std::string& bytes);
Result<std::string> from_hex(const std::string& hex);

}  // namespace husk::proto
