// The OCI runtime config (config.json) as husk reads it. Unknown keys are
// accepted (the spec says so); wrong types and values are rejected with
// the JSON path in the message.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "husk/result.h"

namespace husk {

struct SpecUser {
    uint32_t uid = 0;
    uint32_t gid = 0;
    std::optional<uint32_t> umask;
    std::vector<uint32_t> additional_gids;
};

struct SpecHook {
    std::string path;
    std::vector<std::string> args, env;
    int timeout = 0;  // seconds; 0: none
    bool operator==(const SpecHook&) const = default;
};

// config.json's hooks, by stage ("prestart", "createRuntime", ...).
using SpecHooks = std::map<std::string, std::vector<SpecHook>>;

struct SpecRlimit {
    std::string type;  // "RLIMIT_NOFILE"
    uint64_t soft = 0, hard = 0;
};

struct SpecProcess {
    bool terminal = false;
    uint32_t console_height = 0, console_width = 0;  // process.consoleSize
    SpecUser user;
    std::vector<std::string> args;
    std::vector<std::string> env;
    std::string cwd = "/";
    bool no_new_privileges = false;
    // process.capabilities: set name ("bounding", "effective", ...) -> cap
    // names. Absent: the process keeps what it has, as with runc.
    std::optional<std::map<std::string, std::vector<std::string>>> capabilities;
    std::vector<SpecRlimit> rlimits;
    std::optional<int> oom_score_adj;
};

struct SpecMount {
    std::string destination;
    std::string type;
    std::string source;
    std::vector<std::string> options;
    bool is_bind() const;
};

// linux.devices[i]
struct SpecDevice {
    std::string path;
    std::string type;  // c, b, u or p
    int64_t major = 0, minor = 0;
    std::optional<uint32_t> file_mode;
    uint32_t uid = 0, gid = 0;
};

// linux.uidMappings[i] / gidMappings[i]
struct SpecIdMap {
    uint32_t container_id = 0, host_id = 0, size = 0;
};

struct SpecNamespace {
    std::string type;
    std::string path;
};

struct Spec {
    std::string oci_version;
    std::string root_path;  // as written (may be relative to the bundle)
    bool root_readonly = false;
    std::optional<SpecProcess> process;
    std::string hostname;
    std::vector<SpecMount> mounts;
    std::map<std::string, std::string> annotations;
    std::vector<SpecNamespace> namespaces;
    std::optional<int64_t> memory_limit;  // bytes
    std::optional<int64_t> cpu_quota;
    std::optional<uint64_t> cpu_period;
    std::string cpuset_cpus;
    std::string cgroups_path;  // linux.cgroupsPath
    std::vector<SpecIdMap> uid_mappings, gid_mappings;
    nlohmann::json resources;  // linux.resources as written (checked), or null
    std::vector<SpecDevice> devices;
    std::vector<std::string> masked_paths;
    std::vector<std::string> readonly_paths;
    std::map<std::string, std::string> sysctl;
    SpecHooks hooks;
    nlohmann::json seccomp;  // linux.seccomp as written (checked), or null
    nlohmann::json raw;  // the whole document, for sections read later

    bool has_namespace(const std::string& type) const;
};

// The hooks object alone (state.json keeps it for start and delete).
Result<SpecHooks> parse_hooks(const nlohmann::json& hooks);

// RLIMIT_* by name, or -1.
int rlimit_resource(const std::string& name);

// Parse and validate. `text` is the file's content; errors read
// "config.json: process.args[0]: expected string, got number".
Result<Spec> parse_spec(const std::string& text);
// A process object alone (`exec --process FILE`); errors name `file`.
Result<SpecProcess> parse_process_file(const std::string& text, const std::string& file);
// A LinuxResources object alone (`update --resources FILE`), checked.
Result<nlohmann::json> parse_resources_file(const std::string& text, const std::string& file);
// Read <bundle>/config.json and parse it.
Result<Spec> load_spec(const std::string& bundle);
// Annotations given on husk's command line (`husk --annotation KEY=VALUE`,
// as a docker runtime entry's runtimeArgs or a containerd runtime's
// wrapper put them: the only way a docker older than 24 has to give a
// runtime one): checked, KEY non-empty.
Result<std::map<std::string, std::string>> parse_annotation_args(const std::vector<std::string>& args);
// Those added to the spec's: the bundle's own annotations win.
void add_annotations(Spec& spec, const std::map<std::string, std::string>& defaults);
// Absolute rootfs path for a bundle.
std::string rootfs_path(const std::string& bundle, const Spec& spec);

// runc's `spec` default, serialised.
nlohmann::json default_spec();

}  // namespace husk
