// husk-shim: one per container. Owns the VM, relays stdio and signals,
// serves shim.sock, and exits with the container's status.
//
// Single-threaded: one poll loop. Phases: Booting (VMM launched, waiting
// for the agent's HELLO) -> Creating (create request sent) -> Created
// (creator told, waiting for start) -> Running -> Exiting.
//
// The class and its files: shim.h.
#include "shim/shim.h"

#include "husk/numbers.h"
#include "husk/system_image.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

namespace husk::shimd {

// A destination for a process's output: writes to a pipe or a socket that
// can never block the loop, at any size. The caller's file description is
// left as it is (its flags are the caller's): a pipe is reopened through
// /proc with O_NONBLOCK, a socket takes MSG_DONTWAIT per call. False: no
// such fd.
bool prepare_out(shim::OutBuf& o) {
    struct stat st;
    if (o.fd < 0 || ::fstat(o.fd, &st) < 0) return false;
    if (S_ISSOCK(st.st_mode)) {
        o.sock = true;
    } else if (S_ISFIFO(st.st_mode)) {
        // Fails (ENXIO) if the reader is gone, or EACCES for another
        // user's pipe: then PIPE_BUF-sized writes on the fd as it is.
        o.nb = sys::Fd(::open(("/proc/self/fd/" + std::to_string(o.fd)).c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC));
    } else {
        o.chunk = 64 << 10;  // a file or a device
    }
    return true;
}

// A CPU list ("0-1,3") as sched_setaffinity takes it.
Result<cpu_set_t> cpu_set_of(const std::string& list) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (unsigned c : TRY(parse_cpu_list(list))) CPU_SET(c, &set);
    return set;
}

// An fd number or count from the command line husk gave us.
static Result<int> fd_number(const std::string& flag, const std::string& v) {
    auto n = parse_number<int>(v);
    if (!n || *n < 0) return fail(flag + ": expected a number, got \"" + v + "\"", EINVAL);
    return *n;
}

Result<Args> parse_args(int argc, char** argv) {
    Args a;
    a.log.to_stderr = false;  // fd 2 is the container's stderr; see main() for --debug
    a.log.prefix = "husk-shim";
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        auto val = [&]() -> Result<std::string> {
            if (i + 1 >= argc) return fail("missing value for " + k, EINVAL);
            return std::string(argv[++i]);
        };
        if (k == "--root") a.root = TRY(val());
        else if (k == "--id") a.id = TRY(val());
        else if (k == "--bundle") a.bundle = TRY(val());
        else if (k == "--sync-fd") a.sync_fd = TRY(fd_number(k, TRY(val())));
        else if (k == "--console-socket") a.console_socket = TRY(val());
        else if (k == "--log") a.log.path = TRY(val());
        else if (k == "--log-format") a.log.format = TRY(val()) == "json" ? log::Format::Json : log::Format::Text;
        else if (k == "--debug") a.log.debug = true;
        else if (k == "--wait-hooks") a.wait_hooks = true;
        else if (k == "--hypervisor") a.hypervisor = TRY(val());
        else if (k == "--preserve-fds") a.preserve_fds = TRY(fd_number(k, TRY(val())));
        else if (k == "--restore") a.restore = TRY(val());
        else if (k == "--annotation") a.annotations.push_back(TRY(val()));
        else return fail("unknown argument " + k, EINVAL);
    }
    if (a.root.empty() || a.id.empty() || a.bundle.empty() || a.sync_fd < 0)
        return fail("usage: husk-shim --root R --id ID --bundle B --sync-fd N", EINVAL);
    return a;
}

Result<void> Shim::prepare() {
    spec_ = TRY(load_spec(args_.bundle));
    add_annotations(spec_, TRY(parse_annotation_args(args_.annotations)));  // husk create's --annotation
    if (!spec_.process) return fail("config.json: process: required", EINVAL);
    for (const auto& d : adapt_host_cgroup_binds(spec_))
        log::debug("mounts: " + d + ": a bind of the host's cgroup v1 tree, dropped: the guest's /sys/fs/cgroup (v2) is writable instead");
    for (const auto& c : unknown_capabilities(*spec_.process))
        log::warn("process.capabilities: " + c + " is not a capability this host knows; ignored");
    cgroup_ = TRY(guest_cgroup_files(spec_.resources.is_object() ? spec_.resources : json::object(), "linux.resources"));
    for (const auto& w : cgroup_.warnings) log::warn(w);
    state_ = TRY(read_state(paths_));
    state_.pid = getpid();
    state_.pid_start = sys::proc_start_time(getpid()).value_or(0);
    TRY(write_state(paths_, state_));

    // A plain user (not rootless podman, which runs us as root of its user
    // namespace): the shim becomes root of a user namespace of its own,
    // the caller's ids mapped to 0, as `unshare -r` does; the mount and
    // network namespaces below need no more. (runc wants config.json to
    // ask for a user namespace; ours is the sandbox's, not the container's.)
    if (::geteuid() != 0) TRY_CTX(sys::become_userns_root(), "rootless");

    // Our own mount namespace: the share's bind mounts exist only here and
    // in the VMM, and vanish with them. Slave, so host mounts still reach us.
    TRY_CTX(sys::unshare(CLONE_NEWNS), "mount namespace");
    TRY(sys::mount("", "/", "", MS_REC | MS_SLAVE));
    TRY_CTX(build_shares(), "share rootfs");
    // The container's network namespace is where the shim and the VMM
    // live: the one the caller made (podman, CNI), or a new one, so that
    // hooks that look at the state's pid (docker's libnetwork) configure
    // the container's namespace, not the host's. The VM's NICs come from
    // it (issue 7).
    for (const auto& n : spec_.namespaces) {
        if (n.type != "network") continue;
        if (n.path.empty()) {
            TRY_CTX(sys::unshare(CLONE_NEWNET), "network namespace");
        } else {
            auto fd = TRY_CTX(sys::open(n.path, O_RDONLY), "network namespace");
            if (::setns(fd.get(), CLONE_NEWNET) < 0) return fail_errno("join network namespace " + n.path);
            state_.netns = n.path;
        }
    }
    if (args_.wait_hooks) TRY(wait_for_hooks());
    hv_ = make_hypervisor(args_.hypervisor);
    if (!hv_) return fail("unknown hypervisor " + args_.hypervisor, EINVAL);  // husk create checked it can run
    TRY_CTX(setup_network(), "network");

    // The init's stdio: our own fds 0-2, or a terminal.
    Proc& init = ses_.procs[0];
    init.in[proto::Stdin].fd = 0;
    for (uint32_t i : {proto::Stdout, proto::Stderr}) {
        init.out[i].fd = int(i);
        init.out[i].stream = proto::stream_id(0, i);
        if (spec_.process->terminal) continue;  // setup_terminal() replaces them
        if (!prepare_out(init.out[i])) init.out[i].dead = true;
    }
    if (spec_.process->terminal) TRY_CTX(setup_terminal(), "terminal");
    // org.husk.stdio=console: the guest's terminal is relayed as our stdout
    // (its echo, its CR LF); it has no stderr of its own.
    else if (TRY(system_image::console_stdio(spec_))) init.out[proto::Stderr].eof = true;
    // --preserve-fds: ours at the same numbers, handed over by husk create.
    std::vector<sys::Fd> extra;
    for (int fd : preserved_fds(args_.preserve_fds)) extra.emplace_back(fd);
    init_extra_fds_ = TRY(setup_extra_fds(init, std::move(extra)));
    TRY_CTX(launch_vm(), "start vm");
    return {};
}

// husk runs prestart/createRuntime hooks now, while we sit in the
// container's namespaces with no VM yet: what they plug into the netns is
// what the VM's NICs are made from.
Result<void> Shim::wait_for_hooks() {
    proto::ReportLink link(args_.sync_fd);
    TRY(link.send({.kind = proto::Report::Kind::Hooks}));
    auto go = link.next();
    if (go && !*go) creator_gone();
    if (!go) return tl::unexpected(go.error().context("from husk"));
    if ((*go)->kind != proto::Report::Kind::Go) return fail("unexpected report from husk", EPROTO);
    return {};
}

// The creator died before hearing back: nobody owns this container, so it
// must not outlive the failed create.
void Shim::creator_gone() {
    log::error("creator went away during create; tearing down");
    if (vm_) (void)vm_->stop();
    vm_.reset();
    teardown_network();
    // Our bind mounts first: removing the state dir must never reach into
    // the bundle's rootfs or a volume through them (remove_all also
    // refuses to cross a mount).
    for (auto it = plan_.entries.rbegin(); it != plan_.entries.rend(); ++it)
        (void)sys::umount(paths_.shared + "/" + it->name, MNT_DETACH);
    (void)sys::umount(paths_.shared, MNT_DETACH);
    if (auto r = sys::remove_all(paths_.dir); !r) log::error("remove state: " + r.error().message);
    // The host cgroups its creator made (and would have removed): nothing
    // of the VM is left in them, and we step out to their parents first.
    for (const auto& dir : state_.cgroups) (void)sys::write_file(sys::dirname(dir) + "/cgroup.procs", "0");
    remove_host_cgroups(state_.cgroups);
    _exit(1);
}

void Shim::set_status(const char* st) {
    state_.status = st;
    if (auto r = write_state(paths_, state_); !r) log::error("write state: " + r.error().message);
}

void Shim::on_signal() {
    signalfd_siginfo si;
    while (::read(sig_fd_.get(), &si, sizeof si) == sizeof si) {
        int sig = int(si.ssi_signo);
        if (sig == SIGCHLD) continue;  // VMM liveness is checked every loop
        // While a checkpoint has the agent quiesced, nothing new goes to
        // the guest: a request's answer would follow the quiesce's into
        // the saved VM. (The caller holds the container: runc's
        // checkpoint leaves no room for a signal either.)
        bool live = (ses_.phase == Phase::Created || ses_.phase == Phase::Running) && !checkpoint_;
        if (ses_.procs[0].tty) {
            // Our controlling terminal is the container's: a resize goes to
            // the guest pty; a hangup reaches the guest when the stream ends.
            if (sig == SIGWINCH && live) send_resize(0, tty_slave_.get());
            if (sig == SIGWINCH || sig == SIGHUP || sig == SIGCONT) continue;
        }
        // Signals sent to the shim go to the container, as with runc's init.
        if (live) ses_.request("kill", proto::to_json(proto::Kill{0, sig, false}));
    }
}

void Shim::report_created(const char* st) {
    timeline_.mark("container created");
    log::debug("timeline: " + timeline_.line() + " (since the shim began)");
    state_.status = st;
    if (auto r = write_state(paths_, state_); !r) abort_create(r.error());
    if (!proto::ReportLink(args_.sync_fd).send({.kind = proto::Report::Kind::Ok})) creator_gone();
    ::close(args_.sync_fd);
    args_.sync_fd = -1;
}

void Shim::abort_create(const Error& e) {
    log::error(e.message);
    if (vm_) {
        (void)vm_->stop();
        vm_.reset();
    }
    teardown_network();
    if (args_.sync_fd >= 0) (void)proto::ReportLink(args_.sync_fd).send(proto::report_error(e));
    _exit(1);
}

void Shim::finish(int code, int sig) {
    if (!handed_over_) {  // (handed over: the sandbox's state is final, maybe deleted)
        if (sig) state_.exit_signal = sig;
        else state_.exit_code = code;
        set_status(status::kStopped);
    }
    // The pod's members go with its VM, killed (as a pod's containers are
    // when their namespaces' holder dies): their relays hear it, if they
    // can take one more line now.
    for (auto& [id, m] : members_) {
        if (m.exited || !m.created) continue;
        set_member_status(id, status::kStopped, std::nullopt, SIGKILL);
        if (auto p = ses_.procs.find(m.init); p != ses_.procs.end() && p->second.waiter) {
            send_line(p->second.waiter, json{{"exit", {{"signal", SIGKILL}}}}.dump() + "\n", true);
        }
    }
    if (vm_) {
        (void)vm_->stop();
        vm_.reset();
    }
    teardown_network();
    if (!state_.net_links.empty()) {
        // Undone: `delete` must not undo it again, on a pod sibling that
        // has since taken the link or the tap's name.
        state_.net_links.clear();
        state_.net_taps.clear();
        (void)write_state(paths_, state_);
    }
    ::unlink(paths_.shim_sock.c_str());
#if defined(__SANITIZE_ADDRESS__)
    // _exit skips LeakSanitizer's end-of-process check: run it here, over
    // everything this shim allocated in its whole life (CI's ASan phase).
    __lsan_do_leak_check();
#endif
    if (sig) sys::die_of_signal(sig);  // the caller's wait status matches
    _exit(code);
}

// ---------------------------------------------------------------- loop

Result<void> Shim::loop() {
    for (;;) {
        relaunched_ = false;
        retire_execs();
        // Done: the container exited, what it wrote has been delivered, and
        // every exec has reported (or had its chance to).
        Proc& init = ses_.procs[0];
        bool execs_left = std::any_of(ses_.procs.begin(), ses_.procs.end(),
                                      [](const auto& kv) { return kv.first != 0 && kv.second.container.empty(); });
        if (!handed_over_ && ses_.phase == Phase::Exiting && init.drained() && ses_.out.empty() &&
            (!execs_left || Clock::now() >= ses_.exit_deadline)) {
            if (live_members()) handover();
            else if (init.sig && !image_kernel_.empty() && (*init.sig == SIGINT || *init.sig == SIGHUP)) {
                // reboot(2) in its PID namespace: a power-off (SIGINT) or a
                // restart (SIGHUP) of the image's init, which ends the VM
                // as a clean shutdown.
                log::debug(std::string("the image's init ") + (*init.sig == SIGINT ? "powered off" : "restarted") +
                           ": exit status 0");
                finish(0, 0);
            } else if (init.sig) finish(0, *init.sig);
            else finish(init.code.value_or(255), 0);
        }
        if (handed_over_ && !live_members()) finish(0, 0);  // the pod's last container is gone: so is its VM
        if (vm_died_) {
            if (ses_.phase < Phase::Created && restore_failed("the VMM exited")) continue;
            if (ses_.phase < Phase::Created) boot_failed("");
            if (handed_over_) log::debug("the pod's VM is gone");  // its sandbox was deleted
            else log::error(boot_failure("vm exited unexpectedly"));
            finish(255, 0);
        }

        // Until the agent answers, we dial it, retrying. A dial is a socket
        // of the loop's (a vsock connect, a hybrid vsock's answer): it is
        // taken as it comes, never waited for.
        bool dials = ses_.phase <= Phase::Resuming && (vsock_cid_ || !hybrid_vsock_.empty()) && (!plug_vsock_ || vsock_plugged_);
        if (dial_ && Clock::now() >= dial_deadline_) dial_.reset();  // no answer in time: again
        if (dials && !chan_ && !dial_ && Clock::now() >= next_vsock_try_) {
            auto d = vsock_cid_ ? VsockDial::kernel(vsock_cid_, proto::kAgentVsockPort)
                                : VsockDial::hybrid(hybrid_vsock_, proto::kAgentVsockPort);
            if (d) {
                dial_ = std::move(*d);
                dial_deadline_ = Clock::now() + std::chrono::seconds(1);
            }
            next_vsock_try_ = Clock::now() + std::chrono::milliseconds(50);
        }

        enum Kind { kSig, kCon, kAgentL, kQmpL, kShimL, kChan, kDial, kIn, kOut, kClient };
        struct Tag {
            Kind kind;
            uint64_t id = 0;  // process index or client id
            int fd = 0;       // the stream's fd for kIn/kOut
        };
        sys::PollSet<Tag> p;
        auto add = [&](int fd, short ev, Kind k, uint64_t id = 0, int which = 0) { p.add(fd, ev, {k, id, which}); };
        add(sig_fd_.get(), POLLIN, kSig);
        if (console_r_) add(console_r_.get(), POLLIN, kCon);
        if (agent_listen_) add(agent_listen_.get(), POLLIN, kAgentL);
        if (qmp_listen_) add(qmp_listen_.get(), POLLIN, kQmpL);
        if (ses_.phase >= Phase::Created) add(shim_listen_.get(), POLLIN, kShimL);
        if (chan_) add(chan_.get(), short(POLLIN | (ses_.writable() ? POLLOUT : 0)), kChan);
        if (dial_) add(dial_->fd(), dial_->events(), kDial);
        for (auto& [idx, pr] : ses_.procs) {
            bool reads = idx == 0 ? ses_.phase >= Phase::Created : pr.started;
            for (auto& [fd, in] : pr.in)
                if (reads && in.open && in.credit.left() > 0 && in.fd >= 0 && !checkpoint_) add(in.fd, POLLIN, kIn, idx, int(fd));
            for (auto& [fd, o] : pr.out)
                if (!o.data.empty() && !o.dead) add(o.fd, POLLOUT, kOut, idx, int(fd));
        }
        // A closing client is only written to; one whose replies pile up
        // is not read until it takes them.
        for (auto& [cid, c] : clients_)
            add(c.fd.get(), short((c.closing || !c.out.empty() ? 0 : POLLIN) | (c.out.empty() ? 0 : POLLOUT)), kClient, cid);

        int timeout = -1;
        if (ses_.phase <= Phase::Resuming) {
            int left = sys::ms_left(boot_deadline_);
            if (left <= 0 && restore_failed("its agent did not answer")) continue;
            if (left <= 0)
                abort_create(Error{ETIMEDOUT, boot_failure("the agent did not answer within " +
                                                           std::to_string(boot_timeout_ms_ / 1000.0).substr(0, 5) + "s")});
            timeout = std::min(left, dials ? 50 : 250);
        } else if (ses_.phase == Phase::Exiting) {
            timeout = 250;  // the exec grace period
        }
        if (kill_deadline_ && ses_.phase != Phase::Exiting) {
            int left = sys::ms_left(*kill_deadline_);
            if (left <= 0) {
                log::warn("the guest did not act on SIGKILL within " + std::to_string(defaults::kGuestKillTimeoutMs / 1000) +
                          " s: stopping its VM");
                ses_.answer_pending("kill", status_reply(true));  // killed it is
                finish(0, SIGKILL);
            }
            timeout = sys::sooner(timeout, left);
        }
        int n = TRY(p.wait(timeout));
        reap_vm();
        if (n == 0) continue;

        for (size_t i = 0; i < p.size() && !relaunched_; ++i) {
            short ev = p.revents(i);
            if (!ev) continue;
            auto t = p.tag(i);
            switch (t.kind) {
                case kSig: on_signal(); break;
                case kCon: on_console_readable(); break;
                case kAgentL:
                    // (A clone given vsock: the template's port, held idle.)
                    (plug_vsock_ ? serial_idle_ : chan_) = TRY(sys::accept(agent_listen_.get(), SOCK_NONBLOCK));
                    log::debug("vm: the channel connected after " + std::to_string(ms_since(launched_at_)) + " ms");
                    agent_listen_.reset();
                    ::unlink(paths_.agent_sock.c_str());
                    attach_restored();
                    break;
                case kQmpL: {
                    auto c = TRY(sys::accept(qmp_listen_.get()));
                    qmp_listen_.reset();
                    ::unlink(paths_.qmp_sock.c_str());
                    // A VMM that dies while it starts (a refused option) says why in its log.
                    if (vm_) {
                        if (auto r = vm_->attach_control(c.release()); !r) {
                            if (!restore_failed("qmp: " + r.error().message)) boot_failed("qmp: " + r.error().message);
                            break;
                        }
                        qmp_attached_ = true;
                        log::debug("vm: QMP connected after " + std::to_string(ms_since(launched_at_)) + " ms");
                        attach_restored();
                    }
                    break;
                }
                case kDial: {
                    auto r = dial_->step();
                    if (!r) {
                        dial_.reset();  // not listening yet: the next try in 50 ms
                    } else if (*r) {
                        chan_ = std::move(**r);
                        dial_.reset();
                        attach_restored();
                    }
                    break;
                }
                case kShimL: {
                    auto c = sys::accept(shim_listen_.get());
                    if (c) clients_[next_client_++].fd = std::move(*c);
                    break;
                }
                case kChan:
                    if (ev & (POLLIN | POLLHUP | POLLERR)) {
                        auto r = on_channel_readable();
                        if (!r) {
                            if (ses_.phase < Phase::Created && restore_failed(r.error().message)) break;
                            if (ses_.phase < Phase::Created) boot_failed(r.error().message);
                            if (ses_.phase == Phase::Exiting) {
                                chan_.reset();
                                ses_.out.clear();
                                break;
                            }
                            log::error("channel: " + r.error().message);
                            finish(255, 0);
                        }
                    }
                    if (chan_ && (ev & POLLOUT) && ses_.writable()) {
                        ssize_t w = ::write(chan_.get(), ses_.out.data(), ses_.writable());
                        if (w > 0) {
                            ses_.out.erase(0, size_t(w));
                            if (ses_.channel) ses_.channel->spend(uint32_t(w));
                        }
                    }
                    if (boot_images_held_ && ses_.out.empty()) release_boot_images();
                    break;
                case kIn:
                    if (auto it = ses_.procs.find(uint32_t(t.id)); it != ses_.procs.end()) read_in(it->second, uint32_t(t.fd));
                    break;
                case kOut:
                    if (auto it = ses_.procs.find(uint32_t(t.id)); it != ses_.procs.end()) write_out(it->second, uint32_t(t.fd));
                    break;
                case kClient:
                    if (clients_.count(t.id) && (ev & POLLOUT)) flush_client(t.id);
                    if (clients_.count(t.id) && (ev & (POLLIN | POLLHUP | POLLERR)) && !clients_[t.id].closing &&
                        clients_[t.id].out.empty())
                        on_client(t.id);
                    else if (clients_.count(t.id) && (ev & (POLLHUP | POLLERR)))
                        drop_client(t.id);  // a peer that hung up takes nothing more
                    break;
            }
        }
        for (auto& [idx, pr] : ses_.procs) close_drained(pr);
    }
}

int Shim::main() {
    signal(SIGPIPE, SIG_IGN);
    setsid();
    auto sfd = sys::signalfd_of({SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT, SIGWINCH,
                                 SIGTSTP, SIGTTIN, SIGTTOU});
    if (!sfd) abort_create(sfd.error());
    sig_fd_ = std::move(*sfd);

    if (auto r = prepare(); !r) abort_create(r.error());
    auto r = loop();
    log::error("shim: " + r.error().message);
    if (ses_.phase < Phase::Created) abort_create(r.error());
    finish(255, 0);
}

}  // namespace husk::shimd

using namespace husk;
using namespace husk::shimd;

int main(int argc, char** argv) {
    sys::ensure_std_fds();
    auto a = parse_args(argc, argv);
    if (!a) {
        std::string m = "husk-shim: " + a.error().message + "\n";
        (void)!::write(2, m.data(), m.size());
        return 2;
    }
    // --debug without --log: debug (and the guest console) to stderr, as
    // runc --debug does.
    if (a->log.debug && a->log.path.empty()) a->log.to_stderr = true;
    log::init(a->log);
    Shim s(std::move(*a));
    return s.main();
}

