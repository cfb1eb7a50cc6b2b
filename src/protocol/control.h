// shim.sock, the shim's control socket: what `husk` (and an exec's or a
// pod member's relay) asks of a container's shim, and what it answers.
// One JSON line per request and one reply line; an exec or a member's
// create stays open as a session (signal and resize lines in, one exit
// line out). Every message is a struct with one encoder and one strict
// decoder: an op takes its own fields only, each of its type and range
// (an unknown or misspelt key is an error, never a default).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"
#include "protocol/agent.h"
#include "protocol/protocol.h"

namespace husk::proto {

enum class Op { Start, Kill, Pause, Resume, Ps, Stats, Update, Checkpoint, Exec, Create, Remove, Signal, Resize };
const char* op_name(Op op);

// A session's own lines (exec, a member's create) are Signal and Resize;
// every other op is a connection's one request.
struct ControlRequest {
    Op op = Op::Start;
    // A pod member, served by its sandbox's shim; "" = the shim's own
    // container. (Not for checkpoint, signal or resize.)
    std::string container{};
    int signal = 0;     // kill, signal: 0..64 (0: whether it exists, as kill(2))
    bool all = false;   // kill: every process of the container
    // update: the guest cgroup's files and values (src/husk/cgroups.h)
    std::vector<std::pair<std::string, std::string>> files{};
    std::string image_path{};   // checkpoint: absolute
    bool leave_running = false; // checkpoint
    // exec: the process (sandbox.h agent_process_params), as the agent
    // takes it
    Process process{};
    // exec, create: the preserved fds that follow the stdio fds
    // (SCM_RIGHTS), 0..kMaxPreservedFds (protocol.h)
    int preserve_fds = 0;
    std::string bundle{};                      // create: absolute
    std::map<std::string, std::string> join{};  // create: namespace type -> the container whose it joins
    uint32_t trees = 0;                        // create: mount trees after the fds, one per share entry
    std::map<std::string, std::string> annotations{};  // create: husk's --annotation, under the bundle's own
    uint16_t rows = 0, cols = 0;               // resize
};
nlohmann::json to_json(const ControlRequest& r);
Result<ControlRequest> control_request_from_json(const nlohmann::json& j);

// The answer to one request (and the first line of a session).
struct ControlReply {
    bool ok = true;
    std::string error{};  // !ok: why, one line
    int code = 0;       // !ok: the errno husk exits with, 0 when none fits
    std::optional<nlohmann::json> result{};  // ps (the processes), stats (the cgroup files)
    std::optional<int64_t> pid{};            // exec, create: the process's guest pid
    std::optional<nlohmann::json> stats{};   // checkpoint: the save's figures (checkpoint::stats_to_json)
};
nlohmann::json to_json(const ControlReply& r);
Result<ControlReply> control_reply_from_json(const nlohmann::json& j);
ControlReply refused(const std::string& why, int code = 0);

// A session's last line: how its process ended.
struct SessionExit {
    std::optional<int> code{};    // exited: 0..255
    std::optional<int> signal{};  // killed: 1..64
};
nlohmann::json to_json(const SessionExit& e);
Result<SessionExit> session_exit_from_json(const nlohmann::json& j);

}  // namespace husk::proto
