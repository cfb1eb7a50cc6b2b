// Pod members: containers that joined this sandbox, and the VM's
// handover once the sandbox's own container is gone (shim.h).
#include "shim/shim.h"

namespace husk::shimd {

bool Shim::live_members() const {
    return std::any_of(members_.begin(), members_.end(), [](const auto& kv) { return kv.second.created && !kv.second.exited; });
}

// The sandbox's container has exited, and containers that joined it still
// run: its process (the pid its callers wait on) must end with its status,
// and the VM must not. We fork: the parent ends as the container did; the
// child keeps everything (the VM through its lifeline, the share, the
// channel, shim.sock) and serves the members until the last is gone, as a
// pod's namespaces outlive its pause process under runc.
void Shim::handover() {
    Proc& init = ses_.procs[0];
    if (init.sig) state_.exit_signal = *init.sig;
    else state_.exit_code = init.code.value_or(255);
    set_status(status::kStopped);
    pid_t child = ::fork();
    if (child < 0) {
        log::error("fork the pod's VM owner: " + std::string(std::strerror(errno)) + "; its members stop");
        if (init.sig) finish(0, *init.sig);
        finish(init.code.value_or(255), 0);
    }
    if (child > 0) {
        if (init.sig) sys::die_of_signal(*init.sig);
        _exit(init.code.value_or(255));
    }
    handed_over_ = true;
    // Nothing of the container's stdio or terminal stays open here: its
    // caller sees EOF as it would.
    tty_slave_.reset();
    int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd <= 2 && null >= 0; ++fd) ::dup2(null, fd);
    if (null > 2) ::close(null);
    log::debug("the sandbox's container exited; its VM stays for its members (owner pid " + std::to_string(getpid()) + ")");
}

std::map<std::string, Member>::iterator Shim::member_entry_of_proc(uint32_t idx) {
    return std::find_if(members_.begin(), members_.end(), [idx](const auto& kv) { return kv.second.init == idx; });
}

Member* Shim::member_of_proc(uint32_t idx) {
    auto it = member_entry_of_proc(idx);
    return it == members_.end() ? nullptr : &it->second;
}

// A member's state.json (its directory is husk create's; `delete` may
// have removed it meanwhile).
void Shim::set_member_status(const std::string& id, const char* st, std::optional<int> code, std::optional<int> sig) {
    auto paths = state_paths(args_.root, id);
    auto s = read_state(paths);
    if (!s) return;
    s->status = st;
    if (code) s->exit_code = code;
    if (sig) s->exit_signal = sig;
    if (auto r = write_state(paths, *s); !r) log::debug("state of " + id + ": " + r.error().message);
}

// What a request about a member's init did to it.
void Shim::answered(const std::string& method, uint32_t proc, bool ok) {
    if (method == "quiesce" || method == "resume") return checkpoint_answered(method, ok);
    auto entry = proc ? member_entry_of_proc(proc) : members_.end();
    if (entry == members_.end()) return;
    std::string id = entry->first;  // (a copy: the entry may be erased below)
    Member* m = &entry->second;
    if (method == "create") {
        if (ok) {
            m->created = true;
            set_member_status(id, status::kCreated);
        } else {
            unmount_member(*m);
            members_.erase(id);
            fit_memory(id + " did not join");
        }
    } else if (method == "start" && ok) {
        m->started = true;
        set_member_status(id, status::kRunning);
    } else if (method == "freeze" && !ok) {
        m->paused = !m->paused;  // it stayed as it was
        set_member_status(id, m->paused ? status::kPaused : status::kRunning);
    } else if (method == "remove") {
        unmount_member(*m);
        members_.erase(id);
        fit_memory(id + " left the pod");
    }
}

void Shim::unmount_member(Member& m) {
    for (auto it = m.mounts.rbegin(); it != m.mounts.rend(); ++it)
        if (auto r = sys::umount(*it, MNT_DETACH); !r) log::warn("unmount " + *it + ": " + r.error().message);
    m.mounts.clear();
}

// A request about a container that joined the sandbox.
void Shim::on_member_line(uint64_t cid, const proto::ControlRequest& req) {
    using proto::Op;
    const std::string& id = req.container;
    Op op = req.op;
    bool live = ses_.phase == Phase::Created || ses_.phase == Phase::Running || handed_over_;
    if (!live) return reply(cid, false, ses_.phase == Phase::Exiting ? "the pod's sandbox is stopping" : "the pod's sandbox is not created yet");
    if (handed_over_ && op == Op::Create) return reply(cid, false, "the pod's sandbox has stopped: no container can join it");
    if (paused_) return reply(cid, false, "the pod's sandbox is paused");
    if (op == Op::Create) return create_member(cid, req);
    auto it = members_.find(id);
    if (it == members_.end() || !it->second.created) return reply(cid, false, "container " + id + " is not in this sandbox");
    Member& m = it->second;
    auto init = ses_.procs.find(m.init);
    bool running = init != ses_.procs.end() && !init->second.exited;
    if (op == Op::Remove) {
        // Its processes and group in the guest, then its share here.
        return (void)ses_.request("remove", proto::to_json(proto::Target{.container = id}), cid, m.init);
    }
    if (!running) return reply(cid, false, "container not running");
    if (op == Op::Start) {
        if (m.started) return reply(cid, false, "container is not in created state");
        ses_.request("start", proto::to_json(proto::Start{m.init}), cid, m.init);
    } else if (op == Op::Kill) {
        ses_.request("kill", proto::to_json(proto::Kill{m.init, req.signal, req.all}), cid);
    } else if (op == Op::Pause || op == Op::Resume) {
        bool on = op == Op::Pause;
        if (m.paused == on) return reply(cid, false, std::string("container is ") + (on ? "already paused" : "not paused"));
        m.paused = on;  // as asked; the answer may still refuse it
        set_member_status(id, on ? status::kPaused : status::kRunning);
        ses_.request("freeze", proto::to_json(proto::Target{.container = id, .frozen = on}), cid, m.init);
    } else if (op == Op::Ps || op == Op::Update || op == Op::Stats) {
        if (m.paused) return reply(cid, false, "container is paused");
        proto::Target t{.container = id};
        if (op == Op::Update) t.files = guest_update_files(req.files, &m);
        else if (op == Op::Stats) t.names = stats_files();
        ses_.request(proto::op_name(op), proto::to_json(t), cid);
    } else if (op == Op::Exec) {
        if (m.paused) return reply(cid, false, "container is paused");
        start_exec(cid, req);
    } else {
        reply(cid, false, std::string(proto::op_name(op)) + ": not for a pod's member");  // checkpoint
    }
}

// A container joins the sandbox: its rootfs and binds go under the share
// (shared/<id>/...), reaching the running VM; the agent builds it beside
// the others, in the namespaces it shares with them (req.join: type ->
// container id). Its stdio came as fds; this connection, from its relay,
// stays open as the session that gets its exit.
void Shim::create_member(uint64_t cid, const proto::ControlRequest& req) {
    const std::string& id = req.container;
    if (share_disk_) return reply(cid, false, "this sandbox's VM has its rootfs on a disk (" + hv_->name() +
                                                  "): no container can join it");
    if (!validate_id(id) || id == args_.id || members_.count(id)) return reply(cid, false, "container " + id + " is already in this sandbox");
    const auto& join = req.join;
    for (const auto& [type, t] : join)
        if (t != args_.id && !members_.count(t)) return reply(cid, false, "container " + t + " is not in this sandbox");
    const std::string& bundle = req.bundle;
    int preserve = req.preserve_fds;
    Member m;
    bool host_tty = false;  // the relay's stdio: a terminal (not org.husk.stdio=console's guest one)
    auto build = [&]() -> Result<proto::Create> {
        Spec spec = TRY(load_spec(bundle));
        add_annotations(spec, req.annotations);
        if (!spec.process) return fail("config.json: process: required", EINVAL);
        host_tty = spec.process->terminal;
        (void)adapt_host_cgroup_binds(spec);
        auto cg = TRY(guest_cgroup_files(spec.resources.is_object() ? spec.resources : json::object(), "linux.resources"));
        for (const auto& w : cg.warnings) log::warn(id + ": " + w);
        translate_cpusets(cg.writes, vcpus_, guest_cpusets_);
        SharePlan plan = plan_shares(spec, bundle, [](const std::string& p) { return sys::is_dir(p); });
        for (auto& e : plan.entries) e.name = id + "/" + e.name;
        for (auto& n : plan.mount_share)
            if (!n.empty()) n = id + "/" + n;
        // The stdio first, its preserved fds, then one tree per share entry.
        std::vector<sys::Fd> trees;
        auto& fds = clients_[cid].fds;
        size_t nstdio = (spec.process->terminal ? 1 : 3) + size_t(preserve);
        if (fds.size() != nstdio + req.trees)
            return fail("expected its stdio, " + std::to_string(preserve) + " preserved fds and " + std::to_string(req.trees) +
                            " mount trees, got " + std::to_string(fds.size()) + " fds",
                        EINVAL);
        for (size_t i = nstdio; i < fds.size(); ++i) trees.push_back(std::move(fds[i]));
        fds.resize(nstdio);
        TRY_CTX(bind_shares(plan, &m.mounts, &trees), "share rootfs");
        proto::Create p = agent_create_params(spec, plan, cg);
        p.container = id;
        m.memory_mib = spec.memory_limit ? (uint64_t(*spec.memory_limit) + (1 << 20) - 1) >> 20 : defaults::kContainerMemoryMiB;
        // What it shares is the other container's; what it does not, its own.
        std::erase_if(p.namespaces, [&](const std::string& n) { return join.count(n) > 0; });
        p.join = join;
        p.hooks = guest_hooks(spec.hooks);
        if (!p.hooks.empty()) {
            p.hook_state = oci_state(TRY(read_state(state_paths(args_.root, id))));
            (*p.hook_state)["status"] = status::kCreating;
        }
        return p;
    };
    auto params = build();
    if (!params) {
        unmount_member(m);
        return reply(cid, false, params.error().message);
    }
    uint32_t idx = new_proc_index();
    Proc& p = ses_.procs[idx];
    p.idx = idx;
    p.tty = host_tty;
    p.waiter = cid;
    p.container = id;
    auto extra = setup_stdio(cid, p, p.tty, preserve);
    if (!extra) {
        ses_.procs.erase(idx);
        unmount_member(m);
        return reply(cid, false, "create: " + extra.error().message);
    }
    if (params->process.terminal && !p.tty) p.out[2].eof = true;  // the guest's terminal: one stream out
    params->process.extra_fds = std::move(*extra);
    params->process_index = idx;
    m.init = idx;
    members_[id] = std::move(m);
    fit_memory(id + " joins the pod");
    auto& c = clients_[cid];
    c.session = true;
    c.proc = idx;
    log::debug("pod: " + id + " joins sandbox " + args_.id + " as process " + std::to_string(idx));
    ses_.request("create", proto::to_json(*params), cid, idx);
}

}  // namespace husk::shimd
