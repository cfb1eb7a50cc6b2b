// The shim's requests to the agent: create, start, exec, kill, ps,
// update, pause (freeze), remove, attach, resume (supervisor.h).
#include "guest-agent/supervisor.h"

namespace husk::agent {

// The container a request names ("container"; the first one's when absent).
Result<Container*> Agent::container_of(const json& params) {
    std::string id = params.value("container", "");
    if (id.empty() && !containers_.empty()) {
        for (auto& [cid, c] : containers_)
            if (c.init == 0) return &c;
    }
    auto it = containers_.find(id);
    if (it == containers_.end()) return fail("no container " + id + " in this sandbox", ESRCH);
    return &it->second;
}

// The pid of a container's init while it runs.
Result<pid_t> Agent::running_init(const Container& c) {
    auto it = procs_.find(c.init);
    if (it == procs_.end() || it->second.status) return fail("container is not running", ESRCH);
    return it->second.pid;
}

std::vector<pid_t> Agent::pids_of(const Container& c) {
    auto init = running_init(c);
    if (!init) return {};
    std::string group = c.cgroup_dir.empty() ? "" : c.cgroup_dir.substr(std::strlen(agent::kCgroupRoot));
    return agent::container_pids(*init, group);
}

// A container: the sandbox's first (process 0, with the VM's network), or
// one that joins it ("process_index" its init's, and "join": the
// namespaces it shares, each that of another container's init).
Result<json> Agent::do_create(const json& params) {
    std::string id = params.value("container", "");
    uint32_t idx = params.value("process_index", 0u);
    if (containers_.count(id) || procs_.count(idx)) return fail("container " + id + " already created", EEXIST);
    if ((idx == 0) != containers_.empty()) return fail("process index " + std::to_string(idx) + " is not this container's", EINVAL);
    // The NICs first: createContainer hooks and the workload see the
    // network the container's netns had on the host.
    if (params.contains("network")) {
        auto ifs = TRY(interfaces_from_json(params["network"]));
        TRY_CTX(sys::configure_interfaces(ifs, kNicTimeoutMs), "network");
        say("network configured: " + std::to_string(ifs.size()) + " interface(s)");
    }
    // The namespaces it shares: opened now, entered by the child (the pid
    // one by us, for the child to be born in it).
    static const std::map<std::string, int> kJoinable = {
        {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP}, {"pid", CLONE_NEWPID}};
    std::vector<std::pair<sys::Fd, int>> joins;
    sys::Fd join_pid;
    const json join = params.value("join", json::object());
    for (const auto& [type, target] : join.items()) {
        auto k = kJoinable.find(type);
        if (k == kJoinable.end()) return fail("cannot join a " + type + " namespace", EINVAL);
        auto t = containers_.find(target.get<std::string>());
        if (t == containers_.end()) return fail("no container " + target.get<std::string>() + " to share a " + type + " namespace with", ESRCH);
        pid_t tp = TRY_CTX(running_init(t->second), "container " + t->first);
        auto fd = TRY(sys::open("/proc/" + std::to_string(tp) + "/ns/" + type, O_RDONLY));
        if (k->second == CLONE_NEWPID) join_pid = std::move(fd);
        else joins.emplace_back(std::move(fd), k->second);
    }
    Container c;
    c.init = idx;
    c.seccomp = params.value("seccomp", json());
    c.userns = params.contains("userns");
    if (params.contains("cgroup")) {
        c.cgroup_dir = agent::container_cgroup_dir(idx);
        c.cgroup = TRY(agent::create_container_cgroup(c.cgroup_dir, params["cgroup"].value("files", json::array()),
                                                      params["cgroup"].value("devices", json())));
    }
    std::vector<std::pair<int, int>> join_fds;
    for (auto& [fd, flag] : joins) join_fds.emplace_back(fd.get(), flag);
    if (join_pid && ::setns(join_pid.get(), CLONE_NEWPID) < 0) return fail_errno("join the pid namespace");
    auto p = spawn(params.at("process"), agent::clone_flags(params),
                   [&](int sync, const agent::Stdio& io) { agent::container_init(params, join_fds, sync, io); },
                   params.value("userns", json()), c.cgroup ? c.cgroup.get() : -1);
    if (join_pid && ::setns(own_pidns_.get(), CLONE_NEWPID) < 0) fatal(std::string("setns back to own pid ns: ") + strerror(errno));
    if (!p) {
        if (c.cgroup) agent::remove_container_cgroup(c.cgroup_dir);
        return tl::unexpected(p.error());
    }
    pid_t pid = p->pid;
    p->container = id;
    procs_[idx] = std::move(*p);
    containers_[id] = std::move(c);
    say("container " + id + " created, pid " + std::to_string(pid));
    return json{{"pid", pid}};
}

// A container that joined the sandbox is gone: its processes, its group.
Result<json> Agent::do_remove(const json& params) {
    Container* c = TRY(container_of(params));
    if (c->init == 0) return fail("the sandbox's first container goes with the VM", EINVAL);
    for (pid_t q : pids_of(*c)) ::kill(q, SIGKILL);
    for (auto& [idx, p] : procs_)
        if (p.container == params.value("container", "") && !p.status) ::kill(p.pid, SIGKILL);
    // What its init left in a pid namespace it shares (the pod's), too.
    if (!c->cgroup_dir.empty()) (void)sys::write_file(c->cgroup_dir + "/cgroup.kill", "1");
    if (!c->cgroup_dir.empty()) {
        c->cgroup.reset();
        agent::remove_container_cgroup(c->cgroup_dir);
    }
    containers_.erase(params.value("container", ""));
    return json::object();
}

// The VM is about to be given memory: its driver, once.
// A template's guest becomes this container's VM (boot.h: attach).
Result<json> Agent::do_attach(const json& params) {
    TRY(attach(TRY(proto::attach_from_json(params))));
    return json::object();
}

// After a checkpoint's quiesce: relay again. On a copy restored from the
// checkpoint, with a new shim whose buffers are empty: the send credit of
// every output starts again at the full window, and the shim is told what
// is still open and how much of its stdin we hold.
Result<json> Agent::do_resume(const json& params) {
    if (!quiesced_) return fail("resume: not quiesced", EINVAL);
    if (!params.is_object() || params.size() != 1 || !params.contains("restored") || !params["restored"].is_boolean())
        return fail("resume: expected {\"restored\": bool}", EINVAL);
    quiesced_ = false;
    proto::Resumed r;
    if (params["restored"].get<bool>()) {
        for (auto& [idx, p] : procs_) {
            proto::ResumedProc rp;
            rp.process = idx;
            rp.exited = p.status.has_value() && !p.exit_sent;
            for (auto& [fd, o] : p.out) {
                o.credit = proto::kInitialCredit;
                if (!o.eof) rp.out.push_back(fd);
            }
            for (auto& [fd, in] : p.in)
                if (in.w && !in.close) rp.in.push_back({fd, uint32_t(in.buf.size())});
            r.procs.push_back(std::move(rp));
        }
        say("resumed from a checkpoint");
    }
    return proto::to_json(r);
}

Result<json> Agent::do_memory(const json&) {
    auto order = sys::read_file(std::string(kLateModules) + "/order");
    if (!order) return fail("this guest was not booted to take memory (husk.mem)", ENOTSUP);
    for (const auto& name : order_names(*order)) TRY(load_module(std::string(kLateModules) + "/" + name));
    return json::object();
}

// A pod member's pause: its group frozen, the rest of the VM running.
Result<json> Agent::do_freeze(const json& params) {
    Container* c = TRY(container_of(params));
    if (c->cgroup_dir.empty()) return fail("container has no cgroup to freeze", ENOENT);
    bool on = params.value("frozen", false);
    TRY(agent::write_cgroup_files(c->cgroup_dir, json::array({json::array({"cgroup.freeze", on ? "1" : "0"})})));
    // Done once the kernel says so (every task stopped, or running again).
    for (int i = 0; i < 500; ++i) {
        auto ev = sys::read_file(c->cgroup_dir + "/cgroup.events").value_or("");
        if (ev.find(on ? "frozen 1" : "frozen 0") != std::string::npos) return json::object();
        ::usleep(2000);
    }
    return fail(on ? "the container's cgroup did not freeze" : "the container's cgroup did not thaw", ETIMEDOUT);
}

Result<json> Agent::do_exec(const json& params) {
    uint32_t idx = params.at("process_index").get<uint32_t>();
    if (idx == 0 || procs_.count(idx)) return fail("process index " + std::to_string(idx) + " in use", EEXIST);
    Container* c = TRY(container_of(params));
    pid_t init_pid = TRY(running_init(*c));
    std::string cid = procs_[c->init].container;
    // Children of ours are born in the container's pid namespace; the
    // agent itself stays where it is and switches back right after.
    auto pidns = TRY(sys::open("/proc/" + std::to_string(init_pid) + "/ns/pid", O_RDONLY));
    if (::setns(pidns.get(), CLONE_NEWPID) < 0) return fail_errno("setns pid");
    json xp = params;
    xp["seccomp"] = c->seccomp;
    xp["userns"] = c->userns;
    auto p = spawn(params.at("process"), 0, [&](int sync, const agent::Stdio& io) { agent::exec_init(xp, init_pid, sync, io); },
                   json(), c->cgroup ? c->cgroup.get() : -1);
    if (::setns(own_pidns_.get(), CLONE_NEWPID) < 0) fatal(std::string("setns back to own pid ns: ") + strerror(errno));
    if (!p) return tl::unexpected(p.error());
    // No start step for exec: go.
    pid_t pid = p->pid;
    if (auto r = release(*p); !r) {
        ::kill(pid, SIGKILL);  // the child is exiting anyway if execve failed
        ::waitpid(pid, nullptr, 0);
        return tl::unexpected(r.error());
    }
    p->container = cid;
    procs_[idx] = std::move(*p);
    say("exec " + std::to_string(idx) + " started, pid " + std::to_string(pid));
    return json{{"pid", pid}};
}

// The container's processes, as `husk ps` shows them.
Result<json> Agent::do_ps(const json& params) {
    Container* c = TRY(container_of(params));
    pid_t init = TRY(running_init(*c));
    return agent::ps_processes(init, pids_of(*c));
}

Result<json> Agent::do_update(const json& params) {
    Container* c = TRY(container_of(params));
    if (c->cgroup_dir.empty()) return fail("container has no cgroup", ENOENT);
    TRY(agent::write_cgroup_files(c->cgroup_dir, params.value("files", json::array())));
    return json::object();
}

Result<json> Agent::do_stats(const json& params) {
    Container* c = TRY(container_of(params));
    if (c->cgroup_dir.empty()) return fail("container has no cgroup", ENOENT);
    return agent::read_cgroup_files(c->cgroup_dir, params.value("files", std::vector<std::string>{}));
}

Result<json> Agent::do_resize(const json& params) {
    uint32_t idx = params.at("process").get<uint32_t>();
    auto it = procs_.find(idx);
    if (it == procs_.end() || !it->second.tty) return fail("process has no terminal", ENOTTY);
    struct winsize ws{};
    ws.ws_row = params.at("rows").get<uint16_t>();
    ws.ws_col = params.at("cols").get<uint16_t>();
    if (::ioctl(it->second.tty.get(), TIOCSWINSZ, &ws) < 0) return fail_errno("resize");
    return json::object();
}

// Tell a parked process "S" and wait until it has exec'd (EOF: its
// close-on-exec end is gone) or failed ("E<message>").
Result<void> Agent::release(Process& p) {
    if (::write(p.sync.get(), "S", 1) != 1) return fail_errno("signal start");
    char buf[4096];
    ssize_t n;
    do n = ::read(p.sync.get(), buf, sizeof buf);
    while (n < 0 && errno == EINTR);
    p.sync.reset();
    if (n > 1 && buf[0] == 'E') return fail(std::string(buf + 1, size_t(n - 1)), ENOEXEC);
    return {};
}

Result<json> Agent::do_start(const json& params) {
    uint32_t idx = params.value("process", 0u);
    auto it = procs_.find(idx);
    if (it == procs_.end() || !it->second.sync) return fail("process not waiting for start", ESRCH);
    TRY(release(it->second));
    return json{{"started", true}};
}

Result<json> Agent::do_kill(const json& params) {
    uint32_t idx = params.value("process", 0u);
    int sig = params.value("signal", SIGTERM);
    auto it = procs_.find(idx);
    if (it == procs_.end() || it->second.status) return fail("container not running", ESRCH);
    pid_t pid = it->second.pid;
    if (params.value("all", false))
        if (auto c = containers_.find(it->second.container); c != containers_.end())
            for (pid_t q : pids_of(c->second))
                if (q != pid) ::kill(q, sig);  // the init last, below, so its failure is reported
    if (::kill(pid, sig) < 0) return fail_errno("kill");
    if (sig != SIGKILL && sig != SIGSTOP) {
        auto status = sys::read_file("/proc/" + std::to_string(pid) + "/status", 65536).value_or("");
        std::string nspid = agent::status_field(status, "NSpid");
        bool ns_init = nspid.size() > 1 && nspid.compare(nspid.size() - 2, 2, "\t1") == 0;
        if (ns_init && !agent::takes_signal(status, sig))
            late_.push_back({idx, sig, std::chrono::steady_clock::now() + std::chrono::seconds(2)});
    }
    return json::object();
}

void Agent::retry_late_signals() {
    auto now = std::chrono::steady_clock::now();
    std::erase_if(late_, [&](const LateSignal& l) {
        auto it = procs_.find(l.proc);
        if (it == procs_.end() || it->second.status || now >= l.until) return true;
        pid_t pid = it->second.pid;
        if (!agent::takes_signal(sys::read_file("/proc/" + std::to_string(pid) + "/status", 65536).value_or(""), l.sig))
            return false;
        ::kill(pid, l.sig);
        return true;
    });
}

void Agent::on_request(const json& req) {
    json id = req.value("id", json(nullptr));
    std::string method = req.value("method", "");
    json params = req.value("params", json::object());
    Result<json> r = fail("unknown method " + method, ENOSYS);
    try {
        if (template_boot() && method != "attach") r = fail("this guest waits to be attached (a template)", EPROTO);
        else if (method == "attach") r = do_attach(params);
        else if (method == "create") r = do_create(params);
        else if (method == "start") r = do_start(params);
        else if (method == "kill") r = do_kill(params);
        else if (method == "exec") r = do_exec(params);
        else if (method == "resize") r = do_resize(params);
        else if (method == "ps") r = do_ps(params);
        else if (method == "update") {
            if (park_update(id, params)) return;  // answered once its vCPUs are online
            r = do_update(params);
        }
        else if (method == "stats") r = do_stats(params);
        else if (method == "remove") r = do_remove(params);
        else if (method == "freeze") r = do_freeze(params);
        else if (method == "memory") r = do_memory(params);
        else if (method == "quiesce") {
            quiesced_ = true;
            r = json::object();
        }
        else if (method == "resume") r = do_resume(params);
    } catch (const json::exception& e) {
        r = fail(std::string("bad request: ") + e.what(), EINVAL);
    }
    if (r) respond(id, true, "", *r);
    else respond(id, false, r.error().message);
}

// A VM boots with all its vCPUs, the ones its container's CPU limits do
// not ask for offline (maxcpus=). An update that asks for a number
// ("vcpus") has them onlined or offlined first, by a child (a CPU takes
// ~0.3 s to come up under TCG: the loop must not wait), and is answered
// once that child is done; its cgroup writes may name the new vCPUs.
// In the child: CPUs 0..n-1 online, the rest offline.
[[noreturn]] void set_online_cpus(unsigned n) {
    int bad = 0;
    for (const auto& [cpu, f] : cpu_online_files()) {
        const char* want = cpu < n ? "1" : "0";
        if (sys::read_file(f).value_or("").rfind(want, 0) != 0 && !sys::write_file(f, want)) ++bad;
    }
    _exit(bad ? 1 : 0);
}

bool Agent::park_update(const json& id, const json& params) {
    if (!params.contains("vcpus") || !params["vcpus"].is_number_unsigned()) return false;
    unsigned n = params["vcpus"].get<unsigned>();
    pid_t pid = ::fork();
    if (pid < 0) return false;  // then the writes alone
    if (pid == 0) set_online_cpus(n);
    parked_.push_back({id, params, pid});
    return true;
}

// `pid` exited with `status`: the update it was onlining CPUs for goes on.
bool Agent::unpark(pid_t pid, int status) {
    auto it = std::find_if(parked_.begin(), parked_.end(), [&](const Parked& p) { return p.pid == pid; });
    if (it == parked_.end()) return false;
    Parked p = std::move(*it);
    parked_.erase(it);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) say("update: not every vCPU could be brought to its state");
    auto r = do_update(p.params);
    if (r) respond(p.id, true, "", *r);
    else respond(p.id, false, r.error().message);
    return true;
}


}  // namespace husk::agent
