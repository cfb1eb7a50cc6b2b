// The shim's requests to the agent that build and run a container's
// processes (protocol.h carries them as REQUEST params): "create" (a
// container in the sandbox: the first, or a pod member joining it),
// "exec", and the small ones that name a process or a container. Each is
// a struct with one encoder and one strict decoder (decode.h): an unknown
// key, a missing one, a wrong type or an out-of-range value is an error
// with the field's path, and the agent builds nothing from it. The host
// fills them from the OCI spec (sandbox.h: agent_create_params); the
// names on the wire are the agent's, but linux.seccomp keeps the OCI
// spec's own keys.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/network.h"
#include "husk/result.h"
#include "husk/spec.h"
#include "protocol/decode.h"

namespace husk::proto {

// The frames' JSON (protocol.h). HELLO, both ways: the agent's first
// (a template's says so), the shim's answer.
struct Hello {
    uint32_t version = 0;
    bool template_boot = false;  // "template": attach first (boot.h)
    bool operator==(const Hello&) const = default;
};
// REQUEST: a method and its params (one of the structs below, or
// messages.h's); RESPONSE: its answer, by id.
struct Request {
    uint64_t id = 0;
    std::string method{};
    nlohmann::json params = nlohmann::json::object();  // an object, decoded by the method
    bool operator==(const Request&) const = default;
};
struct Response {
    uint64_t id = 0;
    bool ok = true;
    std::string error{};                    // !ok
    std::optional<nlohmann::json> result{}; // ok: the method's answer
    bool operator==(const Response&) const = default;
};
// EVENT "exit": a process has ended and its output is all sent.
struct ExitEvent {
    uint32_t process = 0;
    std::optional<int> code{};    // exited: 0..255
    std::optional<int> signal{};  // killed: 1..64
    bool operator==(const ExitEvent&) const = default;
};

struct Rlimit {
    int resource = 0;  // RLIMIT_* (the host's numbers; the guest's are the same on x86-64)
    uint64_t soft = 0, hard = 0;
    bool operator==(const Rlimit&) const = default;
};

struct ConsoleSize {
    uint16_t rows = 0, cols = 0;
    bool operator==(const ConsoleSize&) const = default;
};

// A process of the container: its init ("create") or an exec'd one.
struct Process {
    std::vector<std::string> args{};  // at least one
    std::vector<std::string> env{};
    std::string cwd = "/";  // absolute
    uint32_t uid = 0, gid = 0;
    std::vector<uint32_t> additional_gids{};
    std::optional<uint32_t> umask{};
    bool no_new_privileges = false;
    bool terminal = false;
    std::optional<ConsoleSize> console_size{};  // terminal only
    // Absent: the agent leaves them alone (as runc). Sets: bounding,
    // effective, permitted, inheritable, ambient; each CAP_* numbers.
    std::optional<std::map<std::string, std::vector<int>>> capabilities{};
    std::vector<Rlimit> rlimits{};
    std::optional<int> oom_score_adj{};  // -1000..1000
    // --preserve-fds: fds 3.. of the process, each one's flow ("in",
    // "out", "both": protocol.h Flow).
    std::vector<std::string> extra_fds{};
    bool operator==(const Process&) const = default;
};

// A mount of the container: from a share (the host's bind source, named
// by its share entry, with the mounts under it to bind again), or made in
// the guest (`source`, `type`).
struct Mount {
    std::string destination{};
    std::string type{};
    std::vector<std::string> options{};
    std::string source{};                  // not a share's
    std::optional<std::string> share{};    // a share's: its entry's name
    std::vector<std::string> submounts{};  // a share's: relative paths
    bool operator==(const Mount&) const = default;
};

// linux.devices: a node the container gets.
struct Device {
    std::string path{};
    std::string type{};  // c, b, u or p
    int64_t major = 0, minor = 0;
    uint32_t uid = 0, gid = 0;
    std::optional<uint32_t> file_mode{};
    bool operator==(const Device&) const = default;
};

// One rule of the container's device cgroup (cgroups.h guest_device_rules):
// -1 = any major or minor.
struct DeviceRule {
    bool allow = false;
    std::string type = "a";  // a, c or b
    int64_t major = -1, minor = -1;
    std::string access = "rwm";
    bool operator==(const DeviceRule&) const = default;
};

// The container's guest cgroup: its files' values and its device rules.
struct Cgroup {
    std::vector<std::pair<std::string, std::string>> files{};
    std::vector<DeviceRule> devices{};
    bool operator==(const Cgroup&) const = default;
};

// linux.seccomp, as the OCI spec writes it (checked on the host).
struct SeccompArg {
    unsigned index = 0;  // 0..5
    uint64_t value = 0, value_two = 0;
    std::string op{};  // SCMP_CMP_*
    bool operator==(const SeccompArg&) const = default;
};
struct SeccompRule {
    std::vector<std::string> names{};
    std::string action{};  // SCMP_ACT_*
    std::optional<uint32_t> errno_ret{};
    std::vector<SeccompArg> args{};
    bool operator==(const SeccompRule&) const = default;
};
struct Seccomp {
    std::string default_action{};
    std::optional<uint32_t> default_errno_ret{};
    std::vector<std::string> architectures{};
    std::vector<std::string> flags{};
    std::vector<SeccompRule> syscalls{};
    bool operator==(const Seccomp&) const = default;
};
// The actions and operators husk's guest carries out (SCMP_ACT_NOTIFY
// needs an agent of its own: refused).
const std::vector<std::string>& seccomp_actions();
const std::vector<std::string>& seccomp_operators();

struct UserNs {
    std::string uid_map{}, gid_map{};  // as /proc/PID/uid_map takes them
    bool operator==(const UserNs&) const = default;
};

// "create": a container in the sandbox.
struct Create {
    std::string container{};       // its id
    uint32_t process_index = 0;  // its init's (0: the sandbox's first)
    Process process{};
    std::string root_share{};      // the rootfs's share entry
    bool root_readonly = false;
    std::string hostname{};
    std::vector<Mount> mounts{};
    std::vector<std::string> namespaces{};  // its own: pid, mount, uts, ipc, cgroup, user
    std::map<std::string, std::string> join{};  // namespace type -> the member whose it shares
    std::optional<UserNs> userns{};
    std::vector<std::string> masked_paths{}, readonly_paths{};
    std::map<std::string, std::string> sysctl{};
    std::optional<Seccomp> seccomp{};
    std::optional<Cgroup> cgroup{};
    std::vector<Device> devices{};
    std::optional<std::vector<NetInterface>> network{};  // the sandbox's first only
    // createContainer and startContainer hooks, run in the guest, and the
    // OCI state they read (a document of the runtime spec's, as written).
    std::map<std::string, std::vector<SpecHook>> hooks{};
    std::optional<nlohmann::json> hook_state{};
    bool operator==(const Create&) const = default;
};

// "exec": a process that joins a running container.
struct Exec {
    std::string container{};
    uint32_t process_index = 0;  // not 0
    Process process{};
    bool operator==(const Exec&) const = default;
};

// "resume", after a checkpoint's "quiesce" (messages.h: Resumed).
struct Resume {
    bool restored = false;  // on a copy restored from the checkpoint
    bool operator==(const Resume&) const = default;
};

// The answer to "create" and "exec": the process's pid in the guest.
struct Spawned {
    int64_t pid = 0;
    bool operator==(const Spawned&) const = default;
};

// "start", "kill", "resize": one of the sandbox's processes.
struct Start {
    uint32_t process = 0;
    bool operator==(const Start&) const = default;
};
struct Kill {
    uint32_t process = 0;
    int signal = 15;  // 0..64
    bool all = false; // every process of the container, the named one last
    bool operator==(const Kill&) const = default;
};
struct Resize {
    uint32_t process = 0;
    uint16_t rows = 0, cols = 0;
    bool operator==(const Resize&) const = default;
};
// "ps", "stats", "update", "remove", "freeze": a container ("" = the
// sandbox's first), and what the request needs of it.
struct Target {
    std::string container{};
    std::vector<std::pair<std::string, std::string>> files{};  // update: cgroup files and values
    std::vector<std::string> names{};                          // stats: cgroup files to read
    std::optional<bool> frozen{};                              // freeze
    // update: the vCPUs to have online first (its cpuset may name some
    // still offline)
    std::optional<unsigned> vcpus{};
    bool operator==(const Target&) const = default;
};

// The answer to "ps": a process of the container, as its own pid
// namespace sees it (its pid; its parent's if that is in the container
// too, else 0), with what ps prints of it.
struct PsProcess {
    int64_t pid = 0, ppid = 0;
    int64_t uid = 0;
    std::string user{};  // "" when the container's /etc/passwd has no name for uid
    std::string state{}, stat{}, cmd{}, comm{}, tty{};
    int64_t start = 0;                   // seconds since the epoch
    double cpu = 0, pcpu = 0, pmem = 0;  // CPU seconds; percent of its life, of the guest's memory
    int64_t vsz = 0, rss = 0;            // KiB
    bool operator==(const PsProcess&) const = default;
};
// The answer to "stats": the container's cgroup files that could be read,
// name -> content (cgroups.h: runc_stats shapes them).
using CgroupStats = std::map<std::string, std::string>;

nlohmann::json to_json(const Hello& h);
nlohmann::json to_json(const Request& r);
nlohmann::json to_json(const Response& r);
nlohmann::json to_json(const ExitEvent& e);
nlohmann::json to_json(const Process& p);
nlohmann::json to_json(const Create& c);
nlohmann::json to_json(const Exec& e);
nlohmann::json to_json(const DeviceRule& r);
nlohmann::json to_json(const Seccomp& s);
nlohmann::json to_json(const Resume& r);
nlohmann::json to_json(const Spawned& s);
nlohmann::json to_json(const Start& s);
nlohmann::json to_json(const Kill& k);
nlohmann::json to_json(const Resize& r);
nlohmann::json to_json(const Target& t);
nlohmann::json to_json(const PsProcess& p);

Result<void> get(const nlohmann::json& v, const std::string& at, Hello& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Request& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Response& out);
Result<void> get(const nlohmann::json& v, const std::string& at, ExitEvent& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Rlimit& out);
Result<void> get(const nlohmann::json& v, const std::string& at, ConsoleSize& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Process& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Mount& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Device& out);
Result<void> get(const nlohmann::json& v, const std::string& at, DeviceRule& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Cgroup& out);
Result<void> get(const nlohmann::json& v, const std::string& at, SeccompArg& out);
Result<void> get(const nlohmann::json& v, const std::string& at, SeccompRule& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Seccomp& out);
Result<void> get(const nlohmann::json& v, const std::string& at, UserNs& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Create& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Exec& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Resume& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Spawned& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Start& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Kill& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Resize& out);
Result<void> get(const nlohmann::json& v, const std::string& at, Target& out);
Result<void> get(const nlohmann::json& v, const std::string& at, PsProcess& out);

}  // namespace husk::proto

namespace husk {
// (Here for argument-dependent lookup: the types are husk's.)
nlohmann::json to_json(const SpecHook& h);
Result<void> get(const nlohmann::json& v, const std::string& at, SpecHook& out);
}  // namespace husk
