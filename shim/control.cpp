// shim.sock: its clients, their requests and replies (never a blocking
// write), exec sessions and update (shim.h).
#include "shim/shim.h"

namespace husk::shimd {

void Shim::busy(uint64_t client) {
    if (auto it = clients_.find(client); it != clients_.end()) it->second.busy = true;
}

void Shim::created(bool ok, const std::string& error) {
    if (!ok) abort_create(Error{EINVAL, error});
    report_created();
}

// Answer a client. One-shot clients are done after their reply; exec
// sessions stay until their process exits.
void Shim::reply(uint64_t cid, const proto::ControlReply& r) {
    auto it = clients_.find(cid);
    if (it == clients_.end()) return;
    it->second.busy = false;
    send_line(cid, proto::to_json(r).dump() + "\n", !it->second.session);
}

// Queue a line for a client and write what its socket takes now; with
// `last`, the client goes once everything is written.
void Shim::send_line(uint64_t cid, const std::string& line, bool last) {
    auto it = clients_.find(cid);
    if (it == clients_.end()) return;
    it->second.out += line;
    it->second.closing = it->second.closing || last;
    flush_client(cid);
}

void Shim::flush_client(uint64_t cid) {
    auto it = clients_.find(cid);
    if (it == clients_.end()) return;
    auto& c = it->second;
    while (!c.out.empty()) {
        ssize_t w = ::send(c.fd.get(), c.out.data(), c.out.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        if (w <= 0) return drop_client(cid);  // gone: nobody to tell
        c.out.erase(0, size_t(w));
    }
    if (c.out.size() > kClientOutMax) return drop_client(cid);
    if (c.out.empty() && c.closing) drop_client(cid);
}

void Shim::reply(uint64_t cid, bool ok, const std::string& err) { reply(cid, status_reply(ok, err)); }

void Shim::drop_client(uint64_t cid) {
    auto it = clients_.find(cid);
    if (it == clients_.end()) return;
    if (it->second.session)
        if (auto p = ses_.procs.find(it->second.proc); p != ses_.procs.end() && p->second.waiter == cid) {
            p->second.waiter = 0;
            // A pod member's relay is the process its callers wait on:
            // gone, so is the container (as runc's init taking it along).
            if (member_of_proc(p->first) && p->second.started && !p->second.exited)
                ses_.request("kill", proto::to_json(proto::Kill{p->first, SIGKILL, true}));
        }
    clients_.erase(it);
}

// Exec sessions whose process has exited and whose output is delivered
// learn the status; the process is forgotten.
void Shim::retire_execs() {
    for (auto it = ses_.procs.begin(); it != ses_.procs.end();) {
        auto& p = it->second;
        if (p.idx == 0 || !p.exited || !p.drained()) {
            ++it;
            continue;
        }
        proto::SessionExit ex{.code = p.sig ? std::nullopt : std::optional<int>(p.code.value_or(255) & 0xff), .signal = p.sig};
        if (Member* m = member_of_proc(p.idx)) {
            m->exited = true;
            set_member_status(p.container, status::kStopped, p.sig ? std::nullopt : std::optional<int>(p.code.value_or(255)), p.sig);
        }
        uint64_t w = p.waiter;
        it = ses_.procs.erase(it);
        send_line(w, proto::to_json(ex).dump() + "\n", true);
    }
}

void Shim::on_client(uint64_t cid) {
    auto& c = clients_[cid];
    std::vector<sys::Fd> fds;
    auto data = sys::recv_fds(c.fd.get(), 4096, fds);
    for (auto& f : fds) c.fds.push_back(std::move(f));
    if (!data || data->empty() || c.in.size() > 65536 || c.fds.size() > sys::kMaxPassedFds) {
        // Gone (or abusive): a reply still pending for it goes nowhere.
        ses_.forget_client(cid);
        drop_client(cid);
        return;
    }
    c.in += *data;
    for (;;) {
        auto it = clients_.find(cid);
        if (it == clients_.end() || it->second.busy) return;
        auto nl = it->second.in.find('\n');
        if (nl == std::string::npos) return;
        std::string line = it->second.in.substr(0, nl);
        it->second.in.erase(0, nl + 1);
        on_client_line(cid, line);
    }
}

void Shim::on_client_line(uint64_t cid, const std::string& line) {
    auto& c = clients_[cid];
    // Strict (protocol/control.h): a malformed request is refused, saying
    // what is wrong with it; it never reaches the guest.
    auto decoded = proto::control_request_from_json(json::parse(line, nullptr, false));
    if (!decoded) return reply(cid, proto::refused("malformed request: " + decoded.error().message, EPROTO));
    const proto::ControlRequest& req = *decoded;
    using proto::Op;
    Op op = req.op;
    bool live = ses_.phase == Phase::Created || ses_.phase == Phase::Running;
    if (checkpoint_) {
        // Nothing new for the guest until the save is done (checkpoint.cpp).
        if (c.session) return;
        return reply(cid, false, "a checkpoint of the container is in progress; try again");
    }
    if (c.session) {
        // An exec session: signals and window sizes for its process.
        auto p = ses_.procs.find(c.proc);
        if (p == ses_.procs.end() || p->second.exited) return;
        if (op == Op::Signal)
            ses_.request("kill", proto::to_json(proto::Kill{c.proc, req.signal, false}));
        else if (op == Op::Resize && p->second.tty)
            ses_.request("resize", proto::to_json(proto::Resize{c.proc, req.rows, req.cols}));
        return;
    }
    if (op == Op::Signal || op == Op::Resize) return reply(cid, false, std::string(proto::op_name(op)) + ": not in a session");
    if (!req.container.empty() && req.container != args_.id) return on_member_line(cid, req);
    if (op == Op::Create) return reply(cid, false, "container " + args_.id + " is this sandbox's own");
    if (op == Op::Start) {
        if (ses_.phase != Phase::Created) return reply(cid, false, "container is not in created state");
        if (ses_.procs[0].tty) send_resize(0, tty_slave_.get());  // the caller's size, before the process looks
        ses_.request("start", proto::to_json(proto::Start{0}), cid);
    } else if (op == Op::Kill) {
        if (ses_.phase == Phase::Exiting) return reply(cid, false, "container not running");
        if (!live) return reply(cid, false, "container is not created yet");
        int sig = req.signal;
        // An image's init is asked to power off, as a VM's power button
        // would (system_image::poweroff_signal).
        if (sig == SIGTERM && !req.all && poweroff_signal_) {
            sig = *poweroff_signal_;
            log::debug("kill: SIGTERM to the image's init as " + signal_name(sig) + " (power off)");
        }
        json params = proto::to_json(proto::Kill{0, sig, req.all});
        if (paused_) {
            // The agent cannot answer while the vCPUs are stopped. SIGKILL
            // wakes the VM so the container dies (runc thaws for it too);
            // any other signal waits in the channel until resume, as a
            // frozen cgroup keeps it pending.
            if (sig == SIGKILL) {
                if (auto r = set_paused(false); !r) return reply(cid, false, r.error().message);
            } else {
                ses_.request("kill", params);
                return reply(cid, true);
            }
        }
        ses_.request("kill", params, cid);
        // SIGKILL always kills, as with runc: a guest that does not act on
        // it in time (hung, or its agent wedged) loses its VM instead.
        if (sig == SIGKILL && !kill_deadline_)
            kill_deadline_ = Clock::now() + std::chrono::milliseconds(defaults::kGuestKillTimeoutMs);
    } else if (op == Op::Pause || op == Op::Resume) {
        if (ses_.phase != Phase::Running) return reply(cid, false, "container is not running");
        if (paused_ == (op == Op::Pause)) return reply(cid, false, std::string("container is ") + (paused_ ? "already paused" : "not paused"));
        auto r = set_paused(op == Op::Pause);
        reply(cid, bool(r), r ? "" : r.error().message);
    } else if (op == Op::Ps || op == Op::Update || op == Op::Stats) {
        // Questions for the guest, which cannot answer while paused.
        if (!live) return reply(cid, false, "container is not running");
        if (paused_) return reply(cid, false, "container is paused");
        proto::Target t;
        if (op == Op::Update) t.files = guest_update_files(req.files, nullptr);
        if (op == Op::Stats) t.names = stats_files();
        // The guest cgroup's cpuset may name vCPUs still offline: the agent
        // brings the online ones to this many first.
        if (op == Op::Update && max_vcpus_ > 1) t.vcpus = vcpus_;
        ses_.request(proto::op_name(op), proto::to_json(t), cid);
    } else if (op == Op::Checkpoint) {
        start_checkpoint(cid, req);
    } else if (op == Op::Exec) {
        if (!live) return reply(cid, false, ses_.phase == Phase::Exiting ? "container is stopping" : "container is not created yet");
        start_exec(cid, req);
    } else {
        reply(cid, false, std::string(proto::op_name(op)) + ": not for a sandbox's own container");  // remove: a member's
    }
}

// ---------------------------------------------------------------- pod members

// A process's stdio from the fds that came with the client's request
// (stdin, stdout, stderr; one pty for a terminal), then its `preserve_fds`
// preserved fds; the client keeps what follows them. Returns what the
// agent is told of the preserved ones (setup_extra_fds).
Result<std::vector<std::string>> Shim::setup_stdio(uint64_t cid, Proc& p, bool tty, int preserve_fds) {
    auto& c = clients_[cid];
    size_t nstdio = tty ? 1 : 3;
    if (preserve_fds < 0 || c.fds.size() < nstdio + size_t(preserve_fds))
        return fail("expected " + std::to_string(nstdio) + " stdio fds and " + std::to_string(preserve_fds) +
                        " preserved ones, got " + std::to_string(c.fds.size()) + " fds", EINVAL);
    std::vector<sys::Fd> mine(std::make_move_iterator(c.fds.begin()),
                              std::make_move_iterator(c.fds.begin() + long(nstdio) + preserve_fds));
    c.fds.erase(c.fds.begin(), c.fds.begin() + long(nstdio) + preserve_fds);
    auto& in = p.in[proto::Stdin];
    if (tty) {
        // The caller's pty slave: both directions, no stderr.
        TRY(sys::set_nonblock(mine[0].get(), true));
        in.own = TRY(sys::dup(mine[0].get()));
        p.out[1].own = std::move(mine[0]);
        p.out[2].eof = true;
    } else {
        in.own = std::move(mine[0]);
        p.out[1].own = std::move(mine[1]);
        p.out[2].own = std::move(mine[2]);
    }
    in.fd = in.own.get();
    in.credit = proto::SendCredit(ses_.stdin_window);
    for (uint32_t i : {proto::Stdout, proto::Stderr}) {
        auto& o = p.out[i];
        o.fd = o.own ? o.own.get() : -1;
        o.stream = proto::stream_id(p.idx, i);
        if (!o.own) o.dead = true;
        else if (!tty) prepare_out(o);
    }
    std::vector<sys::Fd> extra(std::make_move_iterator(mine.begin() + long(nstdio)), std::make_move_iterator(mine.end()));
    return setup_extra_fds(p, std::move(extra));
}

// A process's preserved fds (3.., in order): each becomes a stream of the
// guest in the directions its access mode allows (fd_flow). Returns what
// the agent is told: "extra_fds".
Result<std::vector<std::string>> Shim::setup_extra_fds(Proc& p, std::vector<sys::Fd> fds) {
    std::vector<std::string> flows;
    uint32_t fd = kFirstPreservedFd;
    for (auto& f : fds) {
        auto flow = TRY(fd_flow(f.get(), int(fd)));
        if (proto::flows_in(flow)) {
            auto& in = p.in[fd];
            in.own = flow == proto::Flow::Both ? TRY(sys::dup(f.get())) : std::move(f);
            in.fd = in.own.get();
            in.credit = proto::SendCredit(ses_.stdin_window);
        }
        if (proto::flows_out(flow)) {
            auto& o = p.out[fd];
            o.own = std::move(f);
            o.fd = o.own.get();
            o.stream = proto::stream_id(p.idx, fd);
            if (!prepare_out(o)) o.dead = true;
        }
        flows.push_back(proto::flow_name(flow));
        ++fd;
    }
    return flows;
}

// A process index no live process has, wrapping below proto::kMaxProcess.
uint32_t Shim::new_proc_index() {
    while (next_proc_ == 0 || next_proc_ > proto::kMaxProcess || ses_.procs.count(next_proc_))
        next_proc_ = next_proc_ == 0 || next_proc_ > proto::kMaxProcess ? 1 : next_proc_ + 1;
    return next_proc_++;
}

// An exec: its stdio came as fds. The connection stays open as the
// session that gets the exit. `container`: a pod member's id, or "".
void Shim::start_exec(uint64_t cid, const proto::ControlRequest& req) {
    auto& c = clients_[cid];
    std::string container = req.container == args_.id ? "" : req.container;
    bool tty = req.process.terminal;
    uint32_t idx = new_proc_index();
    Proc& p = ses_.procs[idx];
    p.idx = idx;
    p.tty = tty;
    p.waiter = cid;
    p.container = container;
    auto extra = setup_stdio(cid, p, tty, req.preserve_fds);
    if (!extra) {
        ses_.procs.erase(idx);
        return reply(cid, false, "exec: " + extra.error().message);
    }
    c.session = true;
    c.proc = idx;
    proto::Exec e{container.empty() ? args_.id : container, idx, req.process};
    e.process.extra_fds = std::move(*extra);
    ses_.request("exec", proto::to_json(e), cid, idx);
}

// `update`'s cgroup writes as the guest must see them (its own vCPU ids);
// a new cpuset re-pins the VMM on the host.
// A memory limit past what the VM holds for the container grows the VM
// (fit_memory). `member`: a pod member's update (the VM's pinning is the
// sandbox's alone).
std::vector<std::pair<std::string, std::string>> Shim::guest_update_files(std::vector<std::pair<std::string, std::string>> w,
                                                                         Member* member) {
    for (const auto& [k, v] : w)
        if (k == "cpuset.cpus" && vm_ && !member)
            if (auto r = pin_vmm(v); !r) log::warn("update: " + r.error().message);
    if (!member) fit_vcpus(w);
    if (auto mib = memory_max_mib(w)) {
        if (member) member->memory_mib = *mib;
        else own_extra_mib_ = *mib + defaults::kMemoryOverheadMiB > vm_mib_ ? *mib + defaults::kMemoryOverheadMiB - vm_mib_ : 0;
        fit_memory("update");
    }
    translate_cpusets(w, vcpus_, guest_cpusets_);
    return w;
}

// The guest's online vCPUs for the container's CPU limits as `w` (an
// update's writes, host CPU ids) leaves them, within the VM's vCPUs: the
// agent onlines or offlines the difference (update's "vcpus").
void Shim::fit_vcpus(const std::vector<std::pair<std::string, std::string>>& w) {
    vcpu_wants_.update(w);
    unsigned want = vcpu_wants_.total(max_vcpus_);
    if (want == vcpus_) return;
    log::debug("vm vcpus online: " + std::to_string(vcpus_) + " -> " + std::to_string(want) + " of " +
               std::to_string(max_vcpus_) + " (update)");
    vcpus_ = want;
}

// The MiB a [[file, value], ...] update's memory.max asks for, if a number.
std::optional<uint64_t> Shim::memory_max_mib(const std::vector<std::pair<std::string, std::string>>& files) {
    for (const auto& [k, v] : files)
        if (k == "memory.max") {
            auto bytes = decimal_figure(v);
            if (!bytes) return std::nullopt;
            return (*bytes + (1 << 20) - 1) >> 20;
        }
    return std::nullopt;
}

void Shim::send_resize(uint32_t proc, int fd) {
    if (auto ws = sys::window_size(fd)) ses_.request("resize", proto::to_json(proto::Resize{proc, ws->ws_row, ws->ws_col}));
}

}  // namespace husk::shimd
