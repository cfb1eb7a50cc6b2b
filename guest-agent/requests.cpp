// The shim's requests to the agent: create, start, exec, kill, ps,
// update, pause (freeze), remove, attach, resume (supervisor.h).
#include "guest-agent/supervisor.h"

namespace husk::agent {

// The container a request names ("" = the sandbox's first).
Result<Container*> Agent::container_of(const std::string& id) {
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
Result<json> Agent::do_create(const proto::Create& params) {
    const std::string& id = params.container;
    uint32_t idx = params.process_index;
    if (containers_.count(id) || procs_.count(idx)) return fail("container " + id + " already created", EEXIST);
    if ((idx == 0) != containers_.empty()) return fail("process index " + std::to_string(idx) + " is not this container's", EINVAL);
    // The NICs first: createContainer hooks and the workload see the
    // network the container's netns had on the host.
    if (params.network) {
        TRY_CTX(sys::configure_interfaces(*params.network, kNicTimeoutMs), "network");
        say("network configured: " + std::to_string(params.network->size()) + " interface(s)");
    }
    // The namespaces it shares: opened now, entered by the child (the pid
    // one by us, for the child to be born in it).
    static const std::map<std::string, int> kJoinable = {
        {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP}, {"pid", CLONE_NEWPID}};
    std::vector<std::pair<sys::Fd, int>> joins;
    sys::Fd join_pid;
    for (const auto& [type, target] : params.join) {
        auto k = kJoinable.find(type);
        if (k == kJoinable.end()) return fail("cannot join a " + type + " namespace", EINVAL);
        auto t = containers_.find(target);
        if (t == containers_.end()) return fail("no container " + target + " to share a " + type + " namespace with", ESRCH);
        pid_t tp = TRY_CTX(running_init(t->second), "container " + t->first);
        auto fd = TRY(sys::open("/proc/" + std::to_string(tp) + "/ns/" + type, O_RDONLY));
        if (k->second == CLONE_NEWPID) join_pid = std::move(fd);
        else joins.emplace_back(std::move(fd), k->second);
    }
    Container c;
    c.init = idx;
    c.seccomp = params.seccomp;
    c.userns = params.userns.has_value();
    if (params.cgroup) {
        c.cgroup_dir = agent::container_cgroup_dir(idx);
        c.cgroup = TRY(agent::create_container_cgroup(c.cgroup_dir, params.cgroup->files, params.cgroup->devices));
    }
    std::vector<std::pair<int, int>> join_fds;
    for (auto& [fd, flag] : joins) join_fds.emplace_back(fd.get(), flag);
    Result<Process> p = fail("no process", EINVAL);
    {
        std::optional<ChildPidns> in_pidns;
        if (join_pid) in_pidns.emplace(TRY(ChildPidns::enter(join_pid.get(), own_pidns_.get())));
        p = spawn(params.process, agent::clone_flags(params),
                  [&](int sync, const agent::Stdio& io) { agent::container_init(params, join_fds, sync, io); }, params.userns,
                  c.cgroup ? c.cgroup.get() : -1);
    }
    if (!p) {
        if (c.cgroup) agent::remove_container_cgroup(c.cgroup_dir);
        return tl::unexpected(p.error());
    }
    pid_t pid = p->pid;
    // Its mounts are held (mount_pin): opened now, as it waits for start
    // in the namespace it made.
    if (auto pin = sys::open("/proc/" + std::to_string(pid) + "/ns/mnt", O_RDONLY | O_CLOEXEC)) c.mounts = std::move(*pin);
    else say("container " + id + ": cannot hold its mounts: " + pin.error().message);
    p->container = id;
    procs_[idx] = std::move(*p);
    containers_[id] = std::move(c);
    say("container " + id + " created, pid " + std::to_string(pid));
    return proto::to_json(proto::Spawned{pid});
}

// mount_pin: the agent holds every container's mount namespace (an fd
// of /proc/<init>/ns/mnt) until the container is removed, so that the
// container's last process to exit is never the one to unmount its share.
// Why: the rootfs and every volume under a virtio-fs share are submounts
// (virtiofsd's announce_submounts), each a superblock of its own on the
// share's one FUSE connection, made in the container's namespace as its
// init first walks into them. When the namespace died with the process,
// the superblock was shut down inside that exit, and now and then an
// inode was still held (by a request in flight: only the connection's last
// superblock waits for those, virtio_kill_sb). Debian's 6.1 kernel then
// stops on BUG() ("Busy inodes after unmount of virtiofs", fs/super.c),
// the exiting process never reaches the agent's wait, and the container
// never exits: 4 `husk run`s in 480 ending on SIGTERM right after
// start, four VMs at once under TCG; none in 640 with the hold.
// Held, the namespace's mounts outlive its processes; the first container's
// go with the VM, a removed member's a while after its processes were
// killed (kUnpinDelay), when nothing of theirs is still in flight.
// (9p and hostfs have no submounts; holding their mounts is harmless.)
void Agent::release_pins() {
    auto now = std::chrono::steady_clock::now();
    std::erase_if(unpins_, [&](const Unpin& u) { return now >= u.at; });
}

// (Each goes kUnpinDelay after its remove: the first is the soonest.)
int Agent::pin_timeout_ms() const { return unpins_.empty() ? -1 : std::max(0, sys::ms_left(unpins_.front().at)); }

// A container that joined the sandbox is gone: its processes, its group.
Result<json> Agent::do_remove(const proto::Target& params) {
    Container* c = TRY(container_of(params.container));
    if (c->init == 0) return fail("the sandbox's first container goes with the VM", EINVAL);
    for (pid_t q : pids_of(*c)) ::kill(q, SIGKILL);
    for (auto& [idx, p] : procs_)
        if (p.container == params.container && !p.status) ::kill(p.pid, SIGKILL);
    // What its init left in a pid namespace it shares (the pod's), too.
    if (!c->cgroup_dir.empty()) (void)sys::write_file(c->cgroup_dir + "/cgroup.kill", "1");
    if (!c->cgroup_dir.empty()) {
        c->cgroup.reset();
        agent::remove_container_cgroup(c->cgroup_dir);
    }
    // Its mounts go once what it killed has had time to exit (mount_pin).
    if (c->mounts) unpins_.push_back({std::move(c->mounts), std::chrono::steady_clock::now() + kUnpinDelay});
    containers_.erase(params.container);
    return json::object();
}

// A template's guest becomes this container's VM (boot.h: attach).
Result<json> Agent::do_attach(const json& params) {
    TRY(attach(TRY(proto::attach_from_json(params))));
    return json::object();
}

// After a checkpoint's quiesce: relay again. On a copy restored from the
// checkpoint, with a new shim whose buffers are empty: the send credit of
// every output starts again at the full window, and the shim is told what
// is still open and how much of its stdin we hold.
Result<json> Agent::do_resume(const proto::Resume& params) {
    if (!quiesced_) return fail("resume: not quiesced", EINVAL);
    quiesced_ = false;
    proto::Resumed r;
    if (params.restored) {
        for (auto& [idx, p] : procs_) {
            proto::ResumedProc rp;
            rp.process = idx;
            rp.exited = p.status.has_value() && !p.exit_sent;
            for (auto& [fd, o] : p.out) {
                o.credit = proto::SendCredit();
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

// The VM is about to be given memory: its driver, once.
Result<json> Agent::do_memory() {
    auto order = sys::read_file(std::string(kLateModules) + "/order");
    if (!order) return fail("this guest was not booted to take memory (husk.mem)", ENOTSUP);
    for (const auto& name : sys::lines(*order)) TRY(load_module(std::string(kLateModules) + "/" + name));
    return json::object();
}

// A pod member's pause: its group frozen, the rest of the VM running.
Result<json> Agent::do_freeze(const proto::Target& params) {
    Container* c = TRY(container_of(params.container));
    if (c->cgroup_dir.empty()) return fail("container has no cgroup to freeze", ENOENT);
    if (!params.frozen) return fail("freeze: frozen: missing", EPROTO);
    bool on = *params.frozen;
    TRY(agent::write_cgroup_files(c->cgroup_dir, {{"cgroup.freeze", on ? "1" : "0"}}));
    // Done once the kernel says so (every task stopped, or running again).
    for (int i = 0; i < 500; ++i) {
        auto ev = sys::read_file(c->cgroup_dir + "/cgroup.events").value_or("");
        if (ev.find(on ? "frozen 1" : "frozen 0") != std::string::npos) return json::object();
        ::usleep(2000);
    }
    return fail(on ? "the container's cgroup did not freeze" : "the container's cgroup did not thaw", ETIMEDOUT);
}

Result<json> Agent::do_exec(const proto::Exec& params) {
    uint32_t idx = params.process_index;
    if (idx == 0 || procs_.count(idx)) return fail("process index " + std::to_string(idx) + " in use", EEXIST);
    Container* c = TRY(container_of(params.container));
    pid_t init_pid = TRY(running_init(*c));
    std::string cid = procs_[c->init].container;
    // Children of ours are born in the container's pid namespace; the
    // agent itself stays where it is and switches back right after.
    auto pidns = TRY(sys::open("/proc/" + std::to_string(init_pid) + "/ns/pid", O_RDONLY));
    Result<Process> p = fail("no process", EINVAL);
    {
        auto in_pidns = TRY(ChildPidns::enter(pidns.get(), own_pidns_.get()));
        auto run = [&](int cgroup) {
            return spawn(params.process, 0,
                         [&](int sync, const agent::Stdio& io) {
                             agent::exec_init(params.process, c->seccomp, c->userns, init_pid, sync, io);
                         },
                         std::nullopt, cgroup);
        };
        p = run(c->cgroup ? c->cgroup.get() : -1);
        // The container's group hands controllers to groups of its own (an
        // init such as systemd made them): the init's group takes the
        // process instead, as runc's exec does.
        if (!p && p.error().code == EBUSY && c->cgroup) {
            auto init_group = agent::open_process_cgroup(init_pid, c->cgroup_dir);
            if (init_group) p = run(init_group->get());
        }
    }
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
    return proto::to_json(proto::Spawned{pid});
}

// The container's processes, as `husk ps` shows them.
Result<json> Agent::do_ps(const proto::Target& params) {
    Container* c = TRY(container_of(params.container));
    pid_t init = TRY(running_init(*c));
    json out = json::array();
    for (const auto& p : agent::ps_processes(init, pids_of(*c))) out.push_back(proto::to_json(p));
    return out;
}

Result<json> Agent::do_update(const proto::Target& params) {
    Container* c = TRY(container_of(params.container));
    if (c->cgroup_dir.empty()) return fail("container has no cgroup", ENOENT);
    TRY(agent::write_cgroup_files(c->cgroup_dir, params.files));
    return json::object();
}

Result<json> Agent::do_stats(const proto::Target& params) {
    Container* c = TRY(container_of(params.container));
    if (c->cgroup_dir.empty()) return fail("container has no cgroup", ENOENT);
    return json(agent::read_cgroup_files(c->cgroup_dir, params.names));
}

Result<json> Agent::do_resize(const proto::Resize& params) {
    uint32_t idx = params.process;
    auto it = procs_.find(idx);
    if (it == procs_.end() || !it->second.tty) return fail("process has no terminal", ENOTTY);
    struct winsize ws{};
    ws.ws_row = params.rows;
    ws.ws_col = params.cols;
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

Result<json> Agent::do_start(const proto::Start& params) {
    uint32_t idx = params.process;
    auto it = procs_.find(idx);
    if (it == procs_.end() || !it->second.sync) return fail("process not waiting for start", ESRCH);
    TRY(release(it->second));
    return json{{"started", true}};
}

Result<json> Agent::do_kill(const proto::Kill& params) {
    uint32_t idx = params.process;
    int sig = params.signal;
    auto it = procs_.find(idx);
    if (it == procs_.end() || it->second.status) return fail("container not running", ESRCH);
    pid_t pid = it->second.pid;
    if (params.all)
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

// Each method's params decoded strictly (protocol/agent.h) before its
// handler sees them: a malformed request builds nothing.
void Agent::on_request(const proto::Request& req) {
    const std::string& method = req.method;
    const json& params = req.params;
    auto typed = [&]<class T>(Result<json> (Agent::*handler)(const T&)) -> Result<json> {
        auto p = proto::decode<T>(params, method);
        if (!p) return tl::unexpected(p.error());
        return (this->*handler)(*p);
    };
    Result<json> r = fail("unknown method " + method, ENOSYS);
    if (template_boot() && method != "attach") r = fail("this guest waits to be attached (a template)", EPROTO);
    else if (method == "attach") r = do_attach(params);
    else if (method == "create") r = typed(&Agent::do_create);
    else if (method == "start") r = typed(&Agent::do_start);
    else if (method == "kill") r = typed(&Agent::do_kill);
    else if (method == "exec") r = typed(&Agent::do_exec);
    else if (method == "resize") r = typed(&Agent::do_resize);
    else if (method == "ps") r = typed(&Agent::do_ps);
    else if (method == "update") {
        auto t = proto::decode<proto::Target>(params, method);
        if (t && park_update(req.id, *t)) return;  // answered once its vCPUs are online
        r = t ? do_update(*t) : tl::unexpected(t.error());
    }
    else if (method == "stats") r = typed(&Agent::do_stats);
    else if (method == "remove") r = typed(&Agent::do_remove);
    else if (method == "freeze") r = typed(&Agent::do_freeze);
    else if ((method == "memory" || method == "quiesce") && !params.empty()) r = fail(method + ": takes no params", EPROTO);
    else if (method == "memory") r = do_memory();
    else if (method == "quiesce") {
        quiesced_ = true;
        r = json::object();
    }
    else if (method == "resume") r = typed(&Agent::do_resume);
    respond(req.id, r);
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

bool Agent::park_update(uint64_t id, const proto::Target& params) {
    if (!params.vcpus) return false;
    unsigned n = *params.vcpus;
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
    respond(p.id, do_update(p.params));
    return true;
}


}  // namespace husk::agent
