// The commands on a created or running container, each a request to its
// shim (or, for a pod member, its sandbox's): start, kill, pause and
// resume, and the questions for its guest (ps, update, stats). Creating
// and deleting are lifecycle.cpp's.
#include <algorithm>

#include "husk/cgroups.h"
#include "husk/hooks.h"
#include "husk/lifecycle.h"
#include "husk/log.h"
#include "husk/shim_client.h"
#include "husk/spec.h"

namespace husk {

Result<void> start_container(const Globals& g, const std::string& id) {
    TRY(validate_id(id));
    auto paths = state_paths(g.root, id);
    auto lock = TRY(ContainerLock::acquire(paths));
    auto st = TRY(read_state(paths));
    std::string s = effective_status(st);
    if (s == status::kStopped) return fail("cannot start a container that has stopped", EINVAL);
    if (s == status::kRunning || s == status::kPaused) return fail("cannot start an already running container", EINVAL);
    if (s != status::kCreated) return fail("cannot start a container in the " + s + " state", EINVAL);
    log::debug("start " + id);
    proto::ControlRequest req{.op = proto::Op::Start};
    TRY(shim_call(shim_route(g, st, req), req, 120000));
    if (auto hooks = parse_hooks(st.hooks); hooks && hooks->count("poststart")) {
        st.status = status::kRunning;
        for (const auto& w : run_all_hooks((*hooks)["poststart"], "poststart", oci_state(st))) log::warn(w);
    }
    return {};
}

Result<void> kill_container(const Globals& g, const std::string& id, int sig, bool all) {
    auto st = TRY(load_state(g, id));  // validates the id
    auto paths = state_paths(g.root, id);
    std::string s = effective_status(st);
    if (s != status::kCreated && s != status::kRunning && s != status::kPaused)
        return fail("container not running", ESRCH);
    log::debug("kill " + id + ": signal " + std::to_string(sig) + (all ? " to all its processes" : ""));
    proto::ControlRequest req{.op = proto::Op::Kill, .signal = sig, .all = all};
    TRY(shim_call(shim_route(g, st, req), req, 30000));
    return {};
}

Result<void> pause_container(const Globals& g, const std::string& id, bool pause) {
    TRY(validate_id(id));
    auto paths = state_paths(g.root, id);
    auto lock = TRY(ContainerLock::acquire(paths));
    auto st = TRY(read_state(paths));
    std::string s = effective_status(st);
    if (pause && s != status::kRunning) return fail("container not running: " + s, EINVAL);
    if (!pause && s != status::kPaused) return fail("container not paused: " + s, EINVAL);
    proto::ControlRequest req{.op = pause ? proto::Op::Pause : proto::Op::Resume};
    TRY(shim_call(shim_route(g, st, req), req, 30000));
    return {};
}

StatePaths shim_route(const Globals& g, const State& st, proto::ControlRequest& req) {
    if (st.sandbox.empty()) return state_paths(g.root, st.id);
    req.container = st.id;
    return state_paths(g.root, st.sandbox);
}

// ps, update and events talk to a live container's guest; a paused VM
// cannot answer.
static Result<State> live_container(const Globals& g, const std::string& id) {
    auto st = TRY(load_state(g, id));
    std::string s = effective_status(st);
    if (s == status::kPaused) return fail("container is paused", EINVAL);
    if (s != status::kCreated && s != status::kRunning) return fail("container not running: " + s, EINVAL);
    return st;
}

// One question for a live container's guest.
static Result<proto::ControlReply> ask_live(const Globals& g, const std::string& id, proto::ControlRequest req) {
    auto st = TRY(live_container(g, id));
    return shim_call(shim_route(g, st, req), req, 30000);
}

Result<std::vector<proto::PsProcess>> ps_container(const Globals& g, const std::string& id) {
    auto r = TRY(ask_live(g, id, {.op = proto::Op::Ps}));
    return TRY_CTX(proto::decode<std::vector<proto::PsProcess>>(r.result.value_or(nlohmann::json::array()), "ps"),
                   "the guest's answer");
}

Result<std::vector<std::string>> update_container(const Globals& g, const std::string& id, const nlohmann::json& given) {
    auto st = TRY(live_container(g, id));
    nlohmann::json resources = given;
    if (resources.contains("memory") && resources["memory"].contains("swap") && !resources["memory"].contains("limit")) {
        // Swap counts memory plus swap: measure it against the limit the
        // container has now, as runc does.
        auto cur = cgroup_figure(TRY(stats_container(g, id)), "memory.max");
        if (cur && *cur <= uint64_t(INT64_MAX)) resources["memory"]["limit"] = int64_t(*cur);  // not "max"
    }
    if (resources.contains("cpu") && resources["cpu"].is_object() && resources["cpu"].contains("cpus") &&
        resources["cpu"]["cpus"].is_string())
        TRY_CTX(check_host_cpus(resources["cpu"]["cpus"].get<std::string>()), "cpu.cpus");
    auto files = TRY(guest_cgroup_files(resources, ""));
    // The host's side first: a bound the host refuses is not promised in
    // the guest. (A pod member's bounds are its guest cgroup's: its VM is
    // the sandbox's, bounded by the sandbox's host cgroup.)
    if (st.sandbox.empty()) TRY(apply_host_limits(resources, std::nullopt, st.cgroups));
    if (resources.contains("devices")) files.warnings.push_back("devices: device rules cannot be changed after create; ignored");
    TRY(ask_live(g, id, {.op = proto::Op::Update, .files = files.writes}));
    return files.warnings;
}

Result<proto::CgroupStats> stats_container(const Globals& g, const std::string& id) {
    auto r = TRY(ask_live(g, id, {.op = proto::Op::Stats}));
    return TRY_CTX(proto::decode<proto::CgroupStats>(r.result.value_or(nlohmann::json::object()), "stats"),
                   "the guest's answer");
}

}  // namespace husk
