// The agent's processes (spawned into their containers) and its loop:
// frames from the shim, output within the shim's credit, stdin as the
// processes take it, exits reported once their output is out.
#include "guest-agent/supervisor.h"

#include "sys/poll_set.h"

namespace husk::agent {

// clone() a child that runs `child(sync_fd, stdio)` with `flags`, and wait
// for its "R" (or "E<message>"). A started process's output waits in its
// pipes until the shim is told it exists.
Result<Process> Agent::spawn(const proto::Process& proc, int flags, const std::function<void(int, const agent::Stdio&)>& child,
                             const std::optional<proto::UserNs>& userns, int cgroup) {
    bool tty = proc.terminal;
    auto [in_r, in_w] = TRY(sys::pipe(O_CLOEXEC));
    auto [out_r, out_w] = TRY(sys::pipe(O_CLOEXEC));
    auto [err_r, err_w] = TRY(sys::pipe(O_CLOEXEC));
    // Preserved fds 3..: the process's end and ours, a pipe one way or a
    // socketpair both.
    std::vector<proto::Flow> flows;
    std::vector<sys::Fd> child_ends, our_ends;
    for (const auto& e : proc.extra_fds) {
        auto flow = proto::flow_of_name(e);
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
    if (msg && *msg == "U" && userns) {
        // The child made its user namespace: map it, and let it go on.
        std::string base = "/proc/" + std::to_string(pid);
        auto ok = sys::write_file(base + "/uid_map", userns->uid_map);
        if (ok) ok = sys::write_file(base + "/gid_map", userns->gid_map);
        if (!ok) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            return fail("user namespace id mappings: " + ok.error().message, EINVAL);
        }
        if (::write(p.sync.get(), "M", 1) == 1) msg = sys::recv_fds(p.sync.get(), 4096, fds);
    }
    if (!msg || msg->empty() || (*msg)[0] != 'R' || (tty && fds.size() != 2)) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        if (msg && msg->size() > 1 && (*msg)[0] == 'E') return fail(msg->substr(1), EINVAL);
        return fail(msg ? "process setup died" : msg.error().message, EIO);
    }
    if (tty) {
        // One pty master carries both directions; there is no stderr
        // stream (the shim knows: it asked for the terminal).
        p.tty = std::move(fds[0]);
        p.tty_peer = std::move(fds[1]);
        if (proc.console_size) {  // before the process can look
            struct winsize ws{};
            ws.ws_row = proc.console_size->rows;
            ws.ws_col = proc.console_size->cols;
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
            on_request(TRY(proto::decode<proto::Request>(json::parse(f.payload, nullptr, false), "request")));
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
            // (The shim is trusted, and checked: one that returned more than
            // it was given still finds the count at the window.)
            if (auto o = it->second.out.find(proto::stream_fd(f.stream)); o != it->second.out.end())
                (void)o->second.credit.give_back(c);
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
                p.tty_peer.reset();  // its output ends once what it left is read
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
    while (s.credit.left() > 0) {
        size_t want = std::min<size_t>(proto::kMaxDataPayload, s.credit.left());
        char* frame = out_.reserve(proto::kHeaderSize + want);
        ssize_t r = ::read(s.fd.get(), frame + proto::kHeaderSize, want);
        if (r > 0) {
            proto::put_header(frame, proto::Type::Data, sid, uint32_t(r));
            out_.commit(proto::kHeaderSize + size_t(r));
            s.credit.spend(uint32_t(r));
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
    proto::ExitEvent e{.process = idx};
    if (WIFSIGNALED(*p.status)) e.signal = WTERMSIG(*p.status);
    else e.code = WEXITSTATUS(*p.status);
    send(proto::encode(proto::Type::Event, 0, proto::to_json(e).dump()));
    p.exit_sent = true;
}

Result<void> Agent::run() {
    sys::Fd sfd = TRY(sys::signalfd_of({SIGCHLD}));

    // A template's guest is attached first (boot.h).
    send(proto::encode(proto::Type::Hello, 0, proto::to_json(proto::Hello{proto::kVersion, template_boot()}).dump()));
    for (;;) {
        enum Kind { kChan, kSig, kOut, kIn, kRedial };
        struct Tag {
            Kind kind;
            uint32_t proc = 0;
            uint32_t fd = 0;
        };
        sys::PollSet<Tag> pf;
        pf.add(chan_.get(), short(POLLIN | (out_.empty() ? 0 : POLLOUT)), {kChan});
        pf.add(sfd.get(), POLLIN, {kSig});
        if (int l = redial_listener(quiesced_); l >= 0) pf.add(l, POLLIN, {kRedial});
        for (auto& [idx, p] : procs_) {
            // Not started: its output waits in the pipe (and all of it while quiesced).
            if (p.sync || quiesced_) continue;
            for (auto& [fd, o] : p.out)
                if (!o.eof && o.credit.left() > 0) pf.add(o.fd.get(), POLLIN, {kOut, idx, fd});
            for (auto& [fd, in] : p.in)
                if (in.w && !in.buf.empty()) pf.add(in.w.get(), POLLOUT, {kIn, idx, fd});
        }
        int timeout = pin_timeout_ms();
        if (!late_.empty()) timeout = sys::sooner(timeout, 10);
        int n = TRY(pf.wait(timeout));
        if (!late_.empty()) retry_late_signals();
        if (!unpins_.empty()) release_pins();
        for (size_t i = 0; n > 0 && i < pf.size(); ++i) {
            short ev = pf.revents(i);
            if (!ev) continue;
            auto t = pf.tag(i);
            if (t.kind == kChan) {
                if (ev & (POLLIN | POLLHUP | POLLERR)) {
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
                    } else if ((r == 0 && (ev & POLLHUP)) || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                        // virtio-serial reports HUP while the host end is
                        // not connected (a template's vsock connection is
                        // reset once restored): nothing to read, wait a little.
                        std::this_thread::sleep_for(std::chrono::milliseconds(10));
                    }
                }
                // Until the channel pushes back: virtio_console takes at
                // most 32 KiB a write, and a round of poll per write cost
                // more than the writes.
                while ((ev & POLLOUT) && !out_.empty()) {
                    ssize_t w = ::write(chan_.get(), out_.data(), out_.size());
                    if (w <= 0) break;
                    out_.consume(size_t(w));
                }
            } else if (t.kind == kRedial) {
                // A restored clone's host, or a restored checkpoint's: the
                // saved connection (and what was on its way) is gone.
                auto c = sys::accept(pf.fd(i), SOCK_NONBLOCK);
                if (!c) continue;
                chan_ = std::move(*c);
                dec_ = proto::Decoder();
                out_.clear();
                say("template: the channel is a new connection");
                break;  // chan_'s pollfd is stale
            } else if (t.kind == kSig) {
                signalfd_siginfo si;
                while (::read(sfd.get(), &si, sizeof si) == sizeof si) {
                }
                reap();
            } else if (t.kind == kOut) {
                read_output(t.proc, t.fd, false);
            } else if (t.kind == kIn) {
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
                    if (!o.eof && o.credit.left() > 0) read_output(idx, fd, true);
                maybe_send_exit(idx);
            }
        }
    }
}


}  // namespace husk::agent
