// husk-agent: static PID 1 of the guest. Mounts, loads modules, finds its
// channel, speaks the protocol, builds the container and relays its stdio.
#include <dirent.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "guest-agent/boot.h"
#include "guest-agent/cgroup.h"
#include "guest-agent/container.h"
#include "guest-agent/procfs.h"
#include "husk/hypervisor.h"
#include "husk/network.h"
#include "protocol/messages.h"
#include "protocol/protocol.h"
#include "sys/netlink.h"
#include "sys/sys.h"

using namespace husk;
using nlohmann::json;
using namespace husk::agent;

namespace {

// How long virtio_net may take to probe the NICs the shim announced.
constexpr int kNicTimeoutMs = 60000;
constexpr int kPipeSize = 1 << 20;  // a process's stdio pipes (the default is 64 KiB)


// What a process writes (stdout, stderr, a preserved fd it writes),
// read from our end and sent within the shim's credit.
struct Stream {
    sys::Fd fd;
    uint32_t credit = proto::kInitialCredit;  // what we may send
    bool eof = false;
};

// What a process reads (stdin, a preserved fd it reads): the shim's bytes,
// written to our end as it takes them.
struct Input {
    sys::Fd w;
    std::string buf;
    bool close = false;  // the shim's end closed: close ours once `buf` is written
    bool sock = false;   // our end is a socket that also carries output: shut it down instead
};

// Streams by the fd of the process they are: in[0] stdin, out[1] stdout,
// out[2] stderr, preserved fds 3.. in `in`, `out` or both.
struct Process {
    std::string container;  // the id of the container it belongs to
    pid_t pid = -1;
    sys::Fd sync;
    sys::Fd tty;  // pty master, if the process has a terminal
    bool killed = false;
    std::map<uint32_t, Stream> out;
    std::map<uint32_t, Input> in;
    std::optional<int> status;
    bool exit_sent = false;

    bool outputs_closed() const {
        return std::all_of(out.begin(), out.end(), [](const auto& kv) { return kv.second.eof; });
    }
};

// One container of the sandbox: the first (its init is process 0) or one
// that joined it. Its processes are in procs_, tagged with its id.
struct Container {
    uint32_t init = 0;  // process index of its init
    nlohmann::json seccomp;  // execs get the container's profile too
    bool userns = false;
    std::string cgroup_dir;  // "" without a cgroup
    sys::Fd cgroup;  // every process of it is born there
};

class Agent {
public:
    Agent(sys::Fd chan, sys::Fd own_pidns, bool ack_reads)
        : chan_(std::move(chan)), own_pidns_(std::move(own_pidns)), ack_reads_(ack_reads) {}
    Result<void> run();

private:
    void send(const std::string& f) { out_.append(f); }
    void respond(const json& id, bool ok, const std::string& err = "", const json& result = nullptr) {
        json r = {{"id", id}, {"ok", ok}};
        if (!ok) r["error"] = err;
        if (!result.is_null()) r["result"] = result;
        send(proto::encode(proto::Type::Response, 0, r.dump()));
    }
    Result<void> on_frame(const proto::Frame& f);
    void on_request(const json& req);
    Result<json> do_create(const json& params);
    Result<json> do_start(const json& params);
    Result<void> release(Process& p);
    Result<json> do_kill(const json& params);
    Result<json> do_exec(const json& params);
    Result<json> do_resize(const json& params);
    Result<json> do_ps(const json& params);
    Result<json> do_update(const json& params);
    Result<json> do_stats(const json& params);
    Result<json> do_remove(const json& params);
    Result<json> do_freeze(const json& params);
    Result<json> do_attach(const json& params);
    Result<json> do_memory(const json& params);
    Result<json> do_resume(const json& params);
    Result<Container*> container_of(const json& params);
    Result<pid_t> running_init(const Container& c);
    std::vector<pid_t> pids_of(const Container& c);
    Result<Process> spawn(const json& proc, int flags, const std::function<void(int, const agent::Stdio&)>& child,
                          const json& userns = json(), int cgroup = -1);
    void reap();
    void read_output(uint32_t idx, uint32_t fd, bool exited);
    Input* input_of(uint32_t stream);
    void maybe_send_exit(uint32_t idx);

    sys::Fd chan_;
    sys::Fd own_pidns_;
    std::map<std::string, Container> containers_;
    // Signals for a container's init that its kernel would have dropped:
    // it is a pid namespace's init that has not yet set up its handling
    // (catatonit, a pod's pause process, just started under TCG). Sent
    // again once it takes them, for a short while after it started, as
    // they would have arrived under runc, where that moment is too short
    // to hit.
    struct LateSignal {
        uint32_t proc;
        int sig;
        std::chrono::steady_clock::time_point until;
    };
    std::vector<LateSignal> late_;
    void retry_late_signals();
    // Updates that wait for their vCPUs to come online (park_update).
    struct Parked {
        json id, params;
        pid_t pid;  // the child onlining them
    };
    std::vector<Parked> parked_;
    bool park_update(const json& id, const json& params);
    bool unpark(pid_t pid, int status);
    proto::Decoder dec_;
    proto::Outbox out_;  // frames for the shim
    std::map<uint32_t, Process> procs_;
    bool hello_done_ = false;
    // A checkpoint's "quiesce" was answered: nothing more goes to the host
    // until "resume" (proto::Resumed).
    bool quiesced_ = false;
    bool ack_reads_ = false;  // a tty channel: tell the shim what we read (proto::kChannelStream)
};

// clone() a child that runs `child(sync_fd, stdio)` with `flags`, and wait
// for its "R" (or "E<message>"). A started process's output waits in its
// pipes until the shim is told it exists.
Result<Process> Agent::spawn(const json& proc, int flags, const std::function<void(int, const agent::Stdio&)>& child,
                             const json& userns, int cgroup) {
    bool tty = proc.value("terminal", false);
    auto [in_r, in_w] = TRY(sys::pipe(O_CLOEXEC));
    auto [out_r, out_w] = TRY(sys::pipe(O_CLOEXEC));
    auto [err_r, err_w] = TRY(sys::pipe(O_CLOEXEC));
    // Preserved fds 3..: the process's end and ours, a pipe one way or a
    // socketpair both.
    std::vector<proto::Flow> flows;
    std::vector<sys::Fd> child_ends, our_ends;
    for (const auto& e : proc.value("extra_fds", json::array())) {
        auto flow = e.is_string() ? proto::flow_of_name(e.get<std::string>()) : std::nullopt;
        if (!flow || flows.size() >= size_t(proto::kMaxStreamFd - 2)) return fail("malformed extra_fds", EINVAL);
        flows.push_back(*flow);
        if (*flow == proto::Flow::Both) {
            auto [a, b] = TRY(sys::socketpair(SOCK_STREAM));
            child_ends.push_back(std::move(a));
            our_ends.push_back(std::move(b));
        } else {
            auto [r, w] = TRY(sys::pipe(O_CLOEXEC));
            child_ends.push_back(std::move(*flow == proto::Flow::In ? r : w));
            our_ends.push_back(std::move(*flow == proto::Flow::In ? w : r));
        }
    }
    auto [sync_p, sync_c] = TRY(sys::socketpair(SOCK_STREAM));
    // clone3 so the child starts life in the container's cgroup (the
    // agent itself stays in the root group).
    struct {
        uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup;
    } args{};
    args.flags = uint64_t(flags);
    args.exit_signal = SIGCHLD;
    if (cgroup >= 0) {
        args.flags |= 0x200000000ULL;  // CLONE_INTO_CGROUP
        args.cgroup = uint64_t(cgroup);
    }
    pid_t pid = pid_t(::syscall(SYS_clone3, &args, sizeof args));
    if (pid < 0) return fail_errno("clone3");
    if (pid == 0) {
        sync_p.reset();
        agent::Stdio io{in_r.get(), out_w.get(), err_w.get(), {}};
        for (auto& e : child_ends) io.extra.push_back(e.get());
        child(sync_c.get(), io);
        _exit(1);
    }
    sync_c.reset();
    child_ends.clear();
    Process p;
    p.pid = pid;
    p.sync = std::move(sync_p);
    std::vector<sys::Fd> fds;
    auto msg = sys::recv_fds(p.sync.get(), 4096, fds);
    if (msg && *msg == "U" && userns.is_object()) {
        // The child made its user namespace: map it, and let it go on.
        std::string base = "/proc/" + std::to_string(pid);
        auto ok = sys::write_file(base + "/uid_map", userns.value("uid_map", ""));
        if (ok) ok = sys::write_file(base + "/gid_map", userns.value("gid_map", ""));
        if (!ok) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            return fail("user namespace id mappings: " + ok.error().message, EINVAL);
        }
        if (::write(p.sync.get(), "M", 1) == 1) msg = sys::recv_fds(p.sync.get(), 4096, fds);
    }
    if (!msg || msg->empty() || (*msg)[0] != 'R' || (tty && fds.size() != 1)) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        if (msg && msg->size() > 1 && (*msg)[0] == 'E') return fail(msg->substr(1), EINVAL);
        return fail(msg ? "process setup died" : msg.error().message, EIO);
    }
    if (tty) {
        // One pty master carries both directions; there is no stderr
        // stream (the shim knows: it asked for the terminal).
        p.tty = std::move(fds[0]);
        if (proc.contains("console_size")) {  // before the process can look
            struct winsize ws{};
            ws.ws_row = proc["console_size"].value("rows", uint16_t(0));
            ws.ws_col = proc["console_size"].value("cols", uint16_t(0));
            ::ioctl(p.tty.get(), TIOCSWINSZ, &ws);
        }
        p.out[1].fd = TRY(sys::dup(p.tty.get()));
        p.in[0].w = TRY(sys::dup(p.tty.get()));
        p.out[2].eof = true;
    } else {
        p.in[0].w = std::move(in_w);
        p.out[1].fd = std::move(out_r);
        p.out[2].fd = std::move(err_r);
        // fewer, larger reads and writes on each side of the pipes
        for (int f : {p.in[0].w.get(), p.out[1].fd.get(), p.out[2].fd.get()}) (void)::fcntl(f, F_SETPIPE_SZ, kPipeSize);
    }
    for (size_t i = 0; i < flows.size(); ++i) {
        uint32_t fd = uint32_t(3 + i);
        if (proto::flows_in(flows[i])) {
            p.in[fd].w = flows[i] == proto::Flow::Both ? TRY(sys::dup(our_ends[i].get())) : std::move(our_ends[i]);
            p.in[fd].sock = flows[i] == proto::Flow::Both;
        }
        if (proto::flows_out(flows[i])) p.out[fd].fd = std::move(our_ends[i]);
    }
    for (auto& [fd, o] : p.out)
        if (o.fd) TRY(sys::set_nonblock(o.fd.get(), true));
    for (auto& [fd, in] : p.in) TRY(sys::set_nonblock(in.w.get(), true));
    return p;
}

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

Input* Agent::input_of(uint32_t stream) {
    auto it = procs_.find(proto::stream_process(stream));
    if (it == procs_.end()) return nullptr;
    auto in = it->second.in.find(proto::stream_fd(stream));
    return in == it->second.in.end() ? nullptr : &in->second;
}

// Our end of an input stream is done with: a socket that still carries
// the process's output is only shut down for writing (the process reads EOF).
void close_input(Input& in) {
    if (in.sock) ::shutdown(in.w.get(), SHUT_WR);
    in.w.reset();
}

Result<void> Agent::on_frame(const proto::Frame& f) {
    using proto::Type;
    switch (f.type) {
        case Type::Hello: hello_done_ = true; return {};
        case Type::Request: {
            json req = json::parse(f.payload, nullptr, false);
            if (!req.is_object()) return fail("malformed request", EPROTO);
            on_request(req);
            return {};
        }
        case Type::Data: {
            Input* in = input_of(f.stream);
            if (!in) return {};
            if (!in->w) send(proto::encode_credit(f.stream, uint32_t(f.payload.size())));
            else in->buf += f.payload;
            return {};
        }
        case Type::Credit: {
            uint32_t c = TRY(proto::decode_credit(f));
            auto it = procs_.find(proto::stream_process(f.stream));
            if (it == procs_.end()) return {};
            if (auto o = it->second.out.find(proto::stream_fd(f.stream)); o != it->second.out.end()) o->second.credit += c;
            return {};
        }
        case Type::Close: {
            if (Input* in = input_of(f.stream)) in->close = true;
            return {};
        }
        default: return fail(std::string("unexpected ") + proto::type_name(f.type), EPROTO);
    }
}

void Agent::reap() {
    for (;;) {
        int st;
        pid_t pid = ::waitpid(-1, &st, WNOHANG);
        if (pid <= 0) return;
        if (unpark(pid, st)) continue;
        for (auto& [idx, p] : procs_)
            if (p.pid == pid) {
                p.status = st;
                say("process " + std::to_string(idx) + " exited, status " + std::to_string(st));
            }
    }
}

// One read from a process's stdout/stderr pipe into a DATA frame, within
// the credit the shim granted. EOF (or, once the process has exited, an
// empty pipe: `exited`) closes the stream.
void Agent::read_output(uint32_t idx, uint32_t fd, bool exited) {
    auto& s = procs_[idx].out[fd];
    uint32_t sid = proto::stream_id(idx, uint32_t(fd));
    // Everything the pipe holds, up to the credit, in one wakeup (under
    // TCG every switch between the writer and us costs a TLB refill),
    // read straight into the frame.
    while (s.credit > 0) {
        size_t want = std::min<size_t>(proto::kMaxDataPayload, s.credit);
        char* frame = out_.reserve(proto::kHeaderSize + want);
        ssize_t r = ::read(s.fd.get(), frame + proto::kHeaderSize, want);
        if (r > 0) {
            proto::put_header(frame, proto::Type::Data, sid, uint32_t(r));
            out_.commit(proto::kHeaderSize + size_t(r));
            s.credit -= uint32_t(r);
            if (size_t(r) < want) return;  // drained for now
        } else if (r == 0 || exited || (errno != EAGAIN && errno != EINTR)) {
            s.eof = true;
            s.fd.reset();
            send(proto::encode(proto::Type::Close, sid, ""));
            return;
        } else {
            return;
        }
    }
}

void Agent::maybe_send_exit(uint32_t idx) {
    auto& p = procs_[idx];
    if (p.exit_sent || !p.status || !p.outputs_closed()) return;
    json e = {{"event", "exit"}, {"process", idx}};
    if (WIFSIGNALED(*p.status)) e["signal"] = WTERMSIG(*p.status);
    else e["code"] = WEXITSTATUS(*p.status);
    send(proto::encode(proto::Type::Event, 0, e.dump()));
    p.exit_sent = true;
}

Result<void> Agent::run() {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    sys::Fd sfd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sfd) return fail_errno("signalfd");

    json hello = {{"version", proto::kVersion}};
    if (template_boot()) hello["template"] = true;  // attach first (boot.h)
    send(proto::encode(proto::Type::Hello, 0, hello.dump()));
    for (;;) {
        std::vector<pollfd> pf;
        enum Tag { kChan, kSig, kOut, kIn, kRedial };
        struct T {
            Tag tag;
            uint32_t proc;
            uint32_t fd;
        };
        std::vector<T> tags;
        pf.push_back({chan_.get(), short(POLLIN | (out_.empty() ? 0 : POLLOUT)), 0});
        tags.push_back({kChan, 0, 0});
        pf.push_back({sfd.get(), POLLIN, 0});
        tags.push_back({kSig, 0, 0});
        if (int l = redial_listener(quiesced_); l >= 0) {
            pf.push_back({l, POLLIN, 0});
            tags.push_back({kRedial, 0, 0});
        }
        for (auto& [idx, p] : procs_) {
            // Not started: its output waits in the pipe (and all of it while quiesced).
            if (p.sync || quiesced_) continue;
            for (auto& [fd, o] : p.out)
                if (!o.eof && o.credit > 0) {
                    pf.push_back({o.fd.get(), POLLIN, 0});
                    tags.push_back({kOut, idx, fd});
                }
            for (auto& [fd, in] : p.in)
                if (in.w && !in.buf.empty()) {
                    pf.push_back({in.w.get(), POLLOUT, 0});
                    tags.push_back({kIn, idx, fd});
                }
        }
        int n = ::poll(pf.data(), pf.size(), late_.empty() ? -1 : 10);
        if (n < 0 && errno != EINTR) return fail_errno("poll");
        if (!late_.empty()) retry_late_signals();
        for (size_t i = 0; n > 0 && i < pf.size(); ++i) {
            if (!pf[i].revents) continue;
            auto t = tags[i];
            if (t.tag == kChan) {
                if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                    char buf[64 << 10];
                    ssize_t r = ::read(chan_.get(), buf, sizeof buf);
                    if (r > 0) {
                        if (ack_reads_) send(proto::encode_credit(proto::kChannelStream, uint32_t(r)));
                        dec_.feed(buf, size_t(r));
                        for (;;) {
                            auto f = TRY(dec_.next());
                            if (!f) break;
                            TRY(on_frame(*f));
                        }
                    } else if ((r == 0 && (pf[i].revents & POLLHUP)) || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                        // virtio-serial reports HUP while the host end is
                        // not connected (a template's vsock connection is
                        // reset once restored): nothing to read, wait a little.
                        std::this_thread::sleep_for(std::chrono::milliseconds(10));
                    }
                }
                // Until the channel pushes back: virtio_console takes at
                // most 32 KiB a write, and a round of poll per write cost
                // more than the writes.
                while ((pf[i].revents & POLLOUT) && !out_.empty()) {
                    ssize_t w = ::write(chan_.get(), out_.data(), out_.size());
                    if (w <= 0) break;
                    out_.consume(size_t(w));
                }
            } else if (t.tag == kRedial) {
                // A restored clone's host, or a restored checkpoint's: the
                // saved connection (and what was on its way) is gone.
                auto c = sys::accept(pf[i].fd, SOCK_NONBLOCK);
                if (!c) continue;
                chan_ = std::move(*c);
                dec_ = proto::Decoder();
                out_.clear();
                say("template: the channel is a new connection");
                break;  // chan_'s pollfd is stale
            } else if (t.tag == kSig) {
                signalfd_siginfo si;
                while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
                }
                reap();
            } else if (t.tag == kOut) {
                read_output(t.proc, t.fd, false);
            } else if (t.tag == kIn) {
                auto& in = procs_[t.proc].in[t.fd];
                ssize_t w = in.sock ? ::send(in.w.get(), in.buf.data(), in.buf.size(), MSG_NOSIGNAL)
                                    : ::write(in.w.get(), in.buf.data(), in.buf.size());
                uint32_t sid = proto::stream_id(t.proc, t.fd);
                if (w > 0) {
                    in.buf.erase(0, size_t(w));
                    send(proto::encode_credit(sid, uint32_t(w)));
                } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    // The reader is gone: what the shim sends is dropped, its credit returned.
                    send(proto::encode_credit(sid, uint32_t(in.buf.size())));
                    in.buf.clear();
                    in.w.reset();
                }
            }
        }
        // A container ends with its init, as a pid namespace does (and
        // without one, as `runc delete` would make it): no exec outlives it.
        for (auto& [cid, c] : containers_) {
            auto init = procs_.find(c.init);
            if (init != procs_.end() && !init->second.status) continue;
            for (auto& [idx, p] : procs_)
                if (idx != c.init && p.container == cid && !p.status && !p.killed) {
                    ::kill(p.pid, SIGKILL);
                    p.killed = true;
                }
        }
        for (auto it = procs_.begin(); it != procs_.end();)
            it = it->first != 0 && it->second.exit_sent ? procs_.erase(it) : std::next(it);
        for (auto& [idx, p] : procs_) {
            for (auto& [fd, in] : p.in)
                if (in.close && in.buf.empty() && in.w) close_input(in);
            if (p.status && !p.exit_sent && !quiesced_) {
                // The process is gone: what is left in its pipes is all
                // there will be, unless a stray child still holds them.
                for (auto& [fd, o] : p.out)
                    if (!o.eof && o.credit > 0) read_output(idx, fd, true);
                maybe_send_exit(idx);
            }
        }
    }
}

}  // namespace

int main() {
    signal(SIGPIPE, SIG_IGN);
    if (getpid() == 1) {
        if (auto r = early_init(); !r) fatal(r.error().message);
        sys::ensure_std_fds();  // the initramfs has no /dev/console: 0-2 start closed
    }
    // SCHED_BATCH: a process's pipe write does not preempt it for us, so
    // the writer fills the pipe and we read it in big pieces (under TCG a
    // context switch flushes the soft TLB). When the guest is otherwise
    // idle, as it is between requests, we still run at once. The
    // container's processes are reset to SCHED_OTHER when we fork them.
    sched_param sp{};
    (void)sched_setscheduler(0, SCHED_BATCH | SCHED_RESET_ON_FORK, &sp);
    auto cmdline = sys::read_file("/proc/cmdline").value_or("");
    g_debug = cmdline_param(cmdline, "husk.debug") == "1";
    std::string kind = cmdline_param(cmdline, "husk.channel");
    auto chan = kind == "vsock"               ? open_vsock_channel()
                : kind.rfind("tty", 0) == 0   ? open_tty_channel(kind)
                                              : open_serial_channel();
    if (!chan) fatal(chan.error().message);
    say("channel open (" + (kind.empty() ? std::string("serial") : kind) + ")");
    auto pidns = sys::open("/proc/self/ns/pid", O_RDONLY);
    if (!pidns) fatal(pidns.error().message);
    Agent a(std::move(*chan), std::move(*pidns), kind.rfind("tty", 0) == 0);
    auto r = a.run();
    fatal(r ? "agent loop ended" : r.error().message);
}
