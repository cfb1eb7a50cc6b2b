// husk-shim: one per container. Owns the VM, relays stdio and signals,
// serves shim.sock, and exits with the container's status.
//
// Single-threaded: one poll loop. Phases: Booting (VMM launched, waiting
// for the agent's HELLO) -> Creating (create request sent) -> Created
// (creator told, waiting for start) -> Running -> Exiting.
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>

#include <nlohmann/json.hpp>

#include "husk/cgroups.h"
#include "husk/config.h"
#include "husk/defaults.h"
#include "husk/hooks.h"
#include "husk/hypervisor.h"
#include "husk/log.h"
#include "husk/network.h"
#include "husk/paths.h"
#include "husk/sandbox.h"
#include "husk/spec.h"
#include "husk/state.h"
#include "protocol/protocol.h"
#include "shim/session.h"
#include "husk/disk_image.h"
#include "hypervisors/virtiofsd.h"
#include "hypervisors/vsock.h"
#include "sys/netlink.h"
#include "sys/sys.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

using namespace husk;
using nlohmann::json;
using shim::Clock;
using shim::Phase;
using shim::Proc;
using shim::ms_until;
using shim::status_reply;

namespace {

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

struct Args {
    std::string root, id, bundle, console_socket;
    int sync_fd = -1;
    bool wait_hooks = false;  // husk runs create hooks before we start the VM
    std::string hypervisor = "qemu";  // husk create chose it (choose_hypervisor)
    log::Config log;
};

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
        else if (k == "--sync-fd") a.sync_fd = std::stoi(TRY(val()));
        else if (k == "--console-socket") a.console_socket = TRY(val());
        else if (k == "--log") a.log.path = TRY(val());
        else if (k == "--log-format") a.log.format = TRY(val()) == "json" ? log::Format::Json : log::Format::Text;
        else if (k == "--debug") a.log.debug = true;
        else if (k == "--wait-hooks") a.wait_hooks = true;
        else if (k == "--hypervisor") a.hypervisor = TRY(val());
        else return fail("unknown argument " + k, EINVAL);
    }
    if (a.root.empty() || a.id.empty() || a.bundle.empty() || a.sync_fd < 0)
        return fail("usage: husk-shim --root R --id ID --bundle B --sync-fd N", EINVAL);
    return a;
}

// A connection on shim.sock: one request and its reply, or an exec
// session that stays open until its process exits.
struct Client {
    sys::Fd fd;
    std::string in;
    std::vector<sys::Fd> fds;  // received with SCM_RIGHTS
    uint32_t proc = 0;         // exec session: its process index
    bool session = false;
    bool busy = false;         // a request of its is with the agent
    // Replies not yet taken: written as the socket takes them, never with
    // the loop waiting on a client that does not read.
    std::string out;
    bool closing = false;      // its last line is in `out`: drop it once written
};

// A client that lets this much of its replies pile up is gone for us.
constexpr size_t kClientOutMax = 64u << 20;

// A container that joined this sandbox (a pod member): its init is one of
// the session's processes, its relay (the host process callers wait on)
// the client that created it, its rootfs and binds a subtree of the share.
struct Member {
    uint32_t init = 0;
    std::vector<std::string> mounts;  // under the share, parents first
    bool created = false, started = false, exited = false;
    bool paused = false;
    uint64_t memory_mib = 0;  // what the VM holds for it (its limit, or the default)
};

class Shim : public shim::SessionHost {
public:
    explicit Shim(Args a) : args_(std::move(a)), paths_(state_paths(args_.root, args_.id)) {}
    int main();

private:
    Result<void> prepare();
    Result<void> build_shares();
    Result<void> wait_for_hooks();
    Result<void> setup_network();
    void teardown_network();
    [[noreturn]] void creator_gone();
    Result<void> setup_terminal();
    Result<void> launch_vm();
    // SessionHost: what the agent session asks of us.
    void booted() override;
    void release_boot_images();
    json create_params() override;
    void created(bool ok, const std::string& error) override;
    void running() override { set_status(status::kRunning); }
    void busy(uint64_t client) override;
    void answered(const std::string& method, uint32_t proc, bool ok) override;
    Result<void> bind_shares(SharePlan& plan, std::vector<std::string>* made, std::vector<sys::Fd>* trees = nullptr);
    void on_member_line(uint64_t cid, const std::string& op, const json& req);
    void create_member(uint64_t cid, const std::string& id, const json& req);
    Result<void> setup_stdio(uint64_t cid, Proc& p, bool tty);
    void unmount_member(Member& m);
    Member* member_of_proc(uint32_t idx);
    void set_member_status(const std::string& id, const char* st, std::optional<int> code = {}, std::optional<int> sig = {});
    void fit_memory(const std::string& why);
    std::optional<uint64_t> memory_max_mib(const json& files);
    Result<void> loop();
    Result<void> on_channel_readable();
    void on_console_readable();
    void on_client(uint64_t cid);
    void on_client_line(uint64_t cid, const std::string& line);
    void start_exec(uint64_t cid, const json& req);
    void on_signal();
    void send_resize(uint32_t proc, int fd);
    Result<void> set_paused(bool on);
    std::optional<json> guest_update_files(const json& files, Member* member);
    Result<void> pin_vmm(const std::string& list);
    void reply(uint64_t cid, const json& r) override;
    void reply(uint64_t cid, bool ok, const std::string& err = "");
    void drop_client(uint64_t cid);
    void send_line(uint64_t cid, const std::string& line, bool last);
    void flush_client(uint64_t cid);
    void read_stdin(Proc& p);
    void write_out(Proc& p, int i);
    void close_drained(Proc& p);
    void retire_execs();
    std::string boot_failure(const std::string& why);
    void reap_vm();
    [[noreturn]] void boot_failed(const std::string& why);
    void report_created();
    void set_status(const char* st);
    [[noreturn]] void finish(int code, int sig);
    bool live_members() const;
    void handover();
    [[noreturn]] void abort_create(const Error& e);

    Args args_;
    StatePaths paths_;
    Spec spec_;
    SharePlan plan_;
    CgroupFiles cgroup_;
    State state_;
    std::unique_ptr<Hypervisor> hv_;
    std::unique_ptr<Vm> vm_;
    bool boot_images_held_ = false;  // the guest booted; its VMM still holds the boot images
    shim::Session ses_{*this};  // the agent protocol: phase, requests, processes
    sys::Fd agent_listen_, qmp_listen_, shim_listen_, chan_, console_r_, console_w_, sig_fd_, console_log_;
    unsigned vcpus_ = 1;
    bool guest_cpusets_ = true;
    uint32_t vsock_cid_ = 0;
    std::string hybrid_vsock_;  // the VMM's hybrid vsock socket, when that is the channel
    Clock::time_point boot_deadline_;
    int boot_timeout_ms_ = 0;
    Clock::time_point next_vsock_try_;
    std::string console_tail_;
    std::string console_line_;  // --debug: the line being assembled
    size_t console_written_ = 0;
    std::map<uint64_t, Client> clients_;
    std::map<std::string, Member> members_;
    std::string share_why_;  // why the share is virtio-fs or 9p (--debug)
    bool share_disk_ = false;  // the guest has a copy of the share: nothing can be added
    // Memory: what the VM booted with, the most it may be given, what it
    // has been given, and what its first container asks beyond its boot
    // size (update). Members ask for theirs (Member::memory_mib).
    uint64_t vm_mib_ = 0, hotplug_max_mib_ = 0, plugged_mib_ = 0, own_extra_mib_ = 0;
    bool memory_driver_asked_ = false;
    sys::Fd lifeline_w_;     // VmConfig::lifeline_fd's other end
    bool handed_over_ = false;  // we are the VM's owner for a pod's members; the sandbox's container is gone
    uint64_t next_client_ = 1;
    uint32_t next_proc_ = 1;
    sys::Fd tty_slave_;  // host side of the init's terminal (our controlling tty)
    bool paused_ = false;
    std::optional<Clock::time_point> kill_deadline_;  // SIGKILL sent: the guest has until then
    bool vm_died_ = false;
    std::vector<NetInterface> nics_;  // the netns's interfaces the VM carries
    std::vector<sys::Fd> taps_;       // theirs, until the VMM has them (a VMM that takes fds)
    std::vector<std::string> tap_names_;  // taps_'s names, or the persistent taps we must delete
    bool taps_persist_ = false;           // the VMM opens its taps by name
};

// ---------------------------------------------------------------- setup

Result<void> Shim::prepare() {
    spec_ = TRY(load_spec(args_.bundle));
    if (!spec_.process) return fail("config.json: process: required", EINVAL);
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
    init.in_fd = 0;
    for (int i = 1; i <= 2; ++i) {
        init.out[i].fd = i;
        init.out[i].stream = proto::stream_id(0, uint32_t(i));
        if (spec_.process->terminal) continue;  // setup_terminal() replaces them
        if (!prepare_out(init.out[i])) init.out[i].dead = true;
    }
    if (spec_.process->terminal) TRY_CTX(setup_terminal(), "terminal");
    TRY_CTX(launch_vm(), "start vm");
    return {};
}

// husk runs prestart/createRuntime hooks now, while we sit in the
// container's namespaces with no VM yet: what they plug into the netns is
// what the VM's NICs are made from.
Result<void> Shim::wait_for_hooks() {
    TRY(sys::write_all(args_.sync_fd, "hooks\n"));
    std::string go;
    char c;
    while (go.size() < 8) {
        ssize_t n = ::read(args_.sync_fd, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) creator_gone();
        if (c == '\n') break;
        go.push_back(c);
    }
    if (go != "go") return fail("unexpected reply from husk: " + go, EPROTO);
    return {};
}

// Every Ethernet interface of the container's netns gets a tap of its own
// and tc redirects both ways between the two (Kata's "tcfilter"): no
// bridge, no extra hop, and the netns looks to its owner as before. A VMM
// that takes fds gets the taps open and they go with it; one that opens
// them by name finds them persistent, owned by the uid it runs as (ours,
// in its jail), and we delete them when it is gone.
Result<void> Shim::setup_network() {
    taps_persist_ = !hv_->capabilities().nic_fd;
    if (!spec_.has_namespace("network")) return {};  // loopback only, in the guest
    for (auto& i : TRY(sys::scan_interfaces())) {
        // One veth feeds one VM: a second container in the same netns (a
        // pod's) cannot have it too.
        if (sys::has_redirect(i.name))
            log::warn("network: " + i.name + " is carried by another VM in this namespace; this one gets loopback only");
        else
            nics_.push_back(std::move(i));
    }
    for (size_t i = 0; i < nics_.size(); ++i) {
        // Recorded first: whatever part of this exists gets undone.
        if (!state_.netns.empty()) {
            state_.net_links.push_back(nics_[i].name);
            TRY(write_state(paths_, state_));
        }
        // A free name: a pod sibling's taps are taken, even one made
        // between our look and our create (which is exclusive).
        std::string tap;
        sys::Fd fd;
        for (size_t k = tap_names_.size();; ++k) {
            tap = tap_name(k);
            if (if_nametoindex(tap.c_str())) continue;
            bool record = taps_persist_ && !state_.netns.empty();
            if (record) {
                state_.net_taps.push_back(tap);
                TRY(write_state(paths_, state_));
            }
            auto r = sys::create_tap(tap, nics_[i].mtu);
            if (r) {
                fd = std::move(*r);
                break;
            }
            if (record) {  // not ours: `delete` must leave it be
                state_.net_taps.pop_back();
                TRY(write_state(paths_, state_));
            }
            if (r.error().code != EBUSY || k >= 99) return tl::unexpected(r.error());
        }
        tap_names_.push_back(tap);
        if (taps_persist_) TRY(sys::persist_tap(fd.get(), ::geteuid()));
        else taps_.push_back(std::move(fd));
        TRY(sys::redirect_both_ways(nics_[i].name, tap));
        log::debug("network: " + nics_[i].name + " (" + nics_[i].mac + ", mtu " + std::to_string(nics_[i].mtu) +
                   ") <-> " + tap + (taps_persist_ ? " (by name)" : ""));
    }
    return {};
}

// Our redirects off the caller's links, and our persistent taps (the VMM
// is gone). Other taps go with their last fd; a netns we made goes with us.
void Shim::teardown_network() {
    taps_.clear();
    if (taps_persist_) sys::delete_taps(tap_names_);
    tap_names_.clear();
    std::vector<std::string> links;
    for (const auto& n : nics_) links.push_back(n.name);
    if (!links.empty()) sys::remove_redirects(links);
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
    _exit(1);
}

Result<void> Shim::build_shares() {
    plan_ = plan_shares(spec_, args_.bundle, [](const std::string& p) { return sys::is_dir(p); });
    TRY(sys::mkdir_p(paths_.shared, 0700));
    // A mount of its own, shared: what joins the sandbox later (a pod
    // member's rootfs) is bound under it here and reaches the VMM's jail,
    // whose copy is its slave (hypervisors/jail.cpp).
    TRY(sys::mount(paths_.shared, paths_.shared, "", MS_BIND));
    TRY(sys::mount("", paths_.shared, "", MS_SHARED));
    return bind_shares(plan_, nullptr);
}

// Bind each entry of `plan` under the share (recording each target in
// `made`, when given, as it is made), and find the submounts the agent
// must know of.
// `trees`: the entries' mount trees, detached where the caller saw them
// (a pod member's, sent by its relay), instead of their paths here.
Result<void> Shim::bind_shares(SharePlan& plan, std::vector<std::string>* made, std::vector<sys::Fd>* trees) {
    if (trees && trees->size() != plan.entries.size())
        return fail("expected " + std::to_string(plan.entries.size()) + " mount trees, got " + std::to_string(trees->size()), EINVAL);
    for (size_t i = 0; i < plan.entries.size(); ++i) {
        const auto& e = plan.entries[i];
        std::string what = i == 0 ? "rootfs" : "mount source";
        // Opened once: what is checked is what is bound.
        auto src = trees ? sys::detached_source(std::move((*trees)[i])) : sys::open_bind_source(e.host_path);
        if (!src && src.error().code == ENOENT) return fail(what + " " + e.host_path + " does not exist", ENOENT);
        if (!src) return fail(what + " " + e.host_path + ": " + src.error().message, src.error().code);
        if (src->directory != e.directory)
            return fail(what + " " + e.host_path + " changed while the container was being created", EBUSY);
        std::string target = paths_.shared + "/" + e.name;
        if (e.directory) {
            TRY(sys::mkdir_p(target, 0755));
        } else {
            TRY(sys::mkdir_p(sys::dirname(target), 0755));
            TRY(sys::write_file(target, "", 0644));
        }
        TRY_CTX(sys::bind_mount(*src, target, e.recursive, e.readonly, e.recursive_readonly), what + " " + e.host_path);
        if (made) made->push_back(target);
    }
    // A read-only rbind (not rro) leaves its submounts writable, as the
    // kernel's bind does: the agent needs to know where they are.
    plan.mount_submounts.assign(plan.mount_share.size(), {});
    std::string mountinfo;
    for (size_t i = 0; i < plan.mount_share.size(); ++i) {
        const std::string& name = plan.mount_share[i];
        auto e = std::find_if(plan.entries.begin(), plan.entries.end(), [&](const ShareEntry& x) { return x.name == name; });
        if (name.empty() || e == plan.entries.end() || !e->recursive || !e->readonly || e->recursive_readonly) continue;
        if (mountinfo.empty()) mountinfo = sys::read_file("/proc/self/mountinfo", 16 << 20).value_or("");
        plan.mount_submounts[i] = sys::mounts_under(mountinfo, paths_.shared + "/" + name);
    }
    return {};
}

// process.terminal: a host pty whose master goes to --console-socket, as
// runc's does. Its slave becomes our controlling terminal (we are a session
// leader), so the caller's resizes reach us as SIGWINCH; it is raw, so the
// guest's pty alone does echo, line editing and ^C.
Result<void> Shim::setup_terminal() {
    if (args_.console_socket.empty()) return fail("process.terminal is true but no --console-socket was given", EINVAL);
    auto pty = TRY(sys::open_pty());
    TRY(sys::take_relay_tty(pty.slave.get()));
    TRY(sys::set_nonblock(pty.slave.get(), true));
    TRY(sys::send_console(args_.console_socket, pty));
    // The caller's stdio is not the container's: let go of it, as runc's
    // init does, or a caller that reads `create`'s output to EOF
    // (containerd's runc shim) waits for as long as we live.
    auto null = TRY(sys::open("/dev/null", O_RDWR));
    for (int fd = 0; fd <= 2; ++fd)
        if (::dup2(null.get(), fd) < 0) return fail_errno("stdio to /dev/null");
    Proc& init = ses_.procs[0];
    init.tty = true;
    init.in_own = TRY(sys::dup(pty.slave.get()));
    init.in_fd = init.in_own.get();
    init.out[1].own = TRY(sys::dup(pty.slave.get()));
    init.out[1].fd = init.out[1].own.get();
    init.out[1].chunk = 4096;
    init.out[2].eof = true;  // a terminal has no separate stderr
    tty_slave_ = std::move(pty.slave);
    return {};
}

// Not here but once the create request is written (the loop): the page-out
// costs ~15 ms of syscalls, which the agent's building the container hides.
void Shim::booted() { boot_images_held_ = true; }

void Shim::release_boot_images() {
    boot_images_held_ = false;
    if (!vm_) return;
    // Memory, not correctness: a host that refuses (a rootless shim has no
    // CAP_SYS_NICE) keeps the pages cached, as before.
    auto r = vm_->booted();
    if (!r) log::debug("vm booted; boot images kept: " + r.error().message);
    else if (*r) log::debug("vm booted: boot images paged out (" + std::to_string(*r >> 20) + " MiB mapped)");
}

// The agent's create request. The hooks that run in the guest come with
// the state they are to read (the init's pid, as callers see it, is ours).
json Shim::create_params() {
    json p = agent_create_params(spec_, plan_, cgroup_);
    p["container"] = args_.id;
    p["process_index"] = 0;
    if (!nics_.empty()) p["network"] = interfaces_to_json(nics_);
    for (const char* stage : {"createContainer", "startContainer"})
        if (auto it = spec_.hooks.find(stage); it != spec_.hooks.end() && !it->second.empty())
            p["hooks"][stage] = hooks_to_json(it->second);
    if (p.contains("hooks")) {
        p["hook_state"] = oci_state(state_);
        p["hook_state"]["status"] = status::kCreating;
    }
    return p;
}

Result<void> Shim::launch_vm() {
    auto caps = hv_->capabilities();
    HostFacts host;
    host.accel = caps.kvm ? Accel::Kvm : Accel::Tcg;
    host.vsock = caps.vsock && !caps.hybrid_vsock;
    host.hybrid_vsock = caps.hybrid_vsock;
    if (caps.stdin_window) ses_.stdin_window = ses_.procs[0].stdin_credit = caps.stdin_window;
    ses_.channel_window = ses_.channel_credit = caps.channel_window;
    host.host_cpus = unsigned(sysconf(_SC_NPROCESSORS_ONLN));
    if (caps.max_vcpus) host.host_cpus = std::min(host.host_cpus, caps.max_vcpus);
    host.kernel = hv_->guest_kernel();
    host.initrd = find_guest_initrd();
    host.debug = args_.log.debug;
    if (caps.memory_hotplug) host.hotplug_mib = defaults::kHotplugMaxMiB;
    for (auto& f : {host.kernel, host.initrd})
        if (!sys::exists(f)) return fail("guest image " + f + " not found (build rootfs-builder or set HUSK_KERNEL/HUSK_INITRD)", ENOENT);
    auto can = share_support(caps, !find_virtiofsd().empty(), rootless());
    if (TRY(rootfs_on_disk(spec_, hv_->name(), caps.shares && (can.nine_p || can.virtio_fs_usable())))) {
        share_disk_ = true;
        host.share_disk = paths_.dir + "/share.img";
        TRY_CTX(make_share_image(paths_.shared, host.share_disk), "rootfs disk");
    } else if (caps.shares) {
        auto config = TRY(load_config());
        auto choice = TRY(choose_share_fs(spec_, config.share, can));
        host.share_fs = choice.fs;
        share_why_ = choice.why;
    }
    // Every socket of the VMM's is in vmm/, its jail's working directory
    // (the VMM sees them by name: sun_path's 108 bytes whatever --root is).
    if (::mkdir(paths_.vmm_dir.c_str(), 0700) < 0 && errno != EEXIST) return fail_errno("mkdir " + paths_.vmm_dir);
    SandboxPaths sp{paths_.shared, paths_.agent_sock, paths_.qmp_sock, paths_.vsock_sock, paths_.virtiofs_sock};
    VmConfig cfg = make_vm_config(spec_, host, sp, nics_, tap_names_);
    vcpus_ = cfg.vcpus;
    vm_mib_ = cfg.memory_mib;
    hotplug_max_mib_ = cfg.hotplug_mib;
    guest_cpusets_ = caps.guest_cpusets;
    translate_cpusets(cgroup_.writes, vcpus_, guest_cpusets_);
    // The cpuset on the host side: the VMM (vCPUs and all) runs only on
    // the spec's CPUs, and the guest's cgroup names its own vCPUs.
    if (!spec_.cpuset_cpus.empty()) {
        cpu_set_t set = TRY(cpu_set_of(spec_.cpuset_cpus));
        if (::sched_setaffinity(0, sizeof set, &set) < 0)
            return fail_errno("linux.resources.cpu.cpus \"" + spec_.cpuset_cpus + "\": cannot run on those host CPUs");
    }
    bool vhost = ::access("/dev/vhost-net", R_OK | W_OK) == 0;
    for (size_t i = 0; i < taps_.size(); ++i) {
        cfg.nics[i].fd = taps_[i].get();
        cfg.nics[i].vhost = vhost;
    }
    if (host.vsock) {
        std::random_device rd;
        vsock_cid_ = 3 + rd() % 0x7ffffff0u;
        cfg.channel.vsock_cid = vsock_cid_;
    } else if (host.hybrid_vsock) {
        hybrid_vsock_ = paths_.vsock_sock;
    } else {
        agent_listen_ = TRY(sys::unix_listen(paths_.agent_sock, 1));
    }
    if (caps.control_socket) qmp_listen_ = TRY(sys::unix_listen(paths_.qmp_sock, 1));
    auto [cr, cw] = TRY(sys::pipe(O_CLOEXEC));
    console_r_ = std::move(cr);
    console_w_ = std::move(cw);
    cfg.console_fd = console_w_.get();
    // The VMM lives while we (or, once the sandbox's container is gone, the
    // process we hand its members to: handover) hold this.
    auto [life_r, life_w] = TRY(sys::pipe(O_CLOEXEC));
    lifeline_w_ = std::move(life_w);
    cfg.lifeline_fd = life_r.get();
    console_log_ = TRY(sys::open(paths_.console_log, O_WRONLY | O_CREAT | O_TRUNC, 0600));
    // QEMU says its accelerator (tests and users read "vm: tcg"); others their name.
    std::string channel = host.hybrid_vsock ? "hybrid vsock"
                          : host.vsock      ? "vsock"
                          : hv_->name() == "uml" ? "console line"
                                                 : "virtio-serial";
    log::debug("vm: " + (hv_->name() == "qemu" ? std::string(accel_name(host.accel)) : hv_->name()) + ", " +
               std::to_string(cfg.vcpus) + " vcpu, " + std::to_string(cfg.memory_mib) + " MiB, channel " + channel +
               (host.share_disk.empty() ? "" : ", rootfs on a disk") + " (sized by " + vm_size_reason(spec_) + ")");
    if (!share_why_.empty())
        log::debug(std::string("share: ") + (host.share_fs == ShareFs::VirtioFs ? "virtio-fs" : hv_->name() == "uml" ? "hostfs" : "9p") +
                   " (" + share_why_ + ")");
    vm_ = TRY(hv_->launch(cfg, paths_.dir, paths_.vmm_log));
    console_w_.reset();
    taps_.clear();  // the VMM's now: a tap lives as long as the VMM does
    state_.vmm_pid = vm_->pid();
    state_.vmm_start = sys::proc_start_time(vm_->pid()).value_or(0);
    TRY(write_state(paths_, state_));

    int timeout_ms = defaults::kBootTimeoutMs;
    if (auto it = spec_.annotations.find(defaults::kAnnotationBootTimeout); it != spec_.annotations.end()) {
        try {
            timeout_ms = int(std::stod(it->second) * 1000);
        } catch (...) {
            return fail("annotation " + it->first + ": expected seconds, got \"" + it->second + "\"", EINVAL);
        }
    }
    boot_timeout_ms_ = timeout_ms;
    boot_deadline_ = Clock::now() + std::chrono::milliseconds(timeout_ms);
    shim_listen_ = TRY(sys::unix_listen(paths_.shim_sock, 64));
    return {};
}

// ---------------------------------------------------------------- events

void Shim::busy(uint64_t client) {
    if (auto it = clients_.find(client); it != clients_.end()) it->second.busy = true;
}

void Shim::created(bool ok, const std::string& error) {
    if (!ok) abort_create(Error{EINVAL, error});
    report_created();
}

// Answer a client. One-shot clients are done after their reply; exec
// sessions stay until their process exits.
void Shim::reply(uint64_t cid, const json& r) {
    auto it = clients_.find(cid);
    if (it == clients_.end()) return;
    it->second.busy = false;
    send_line(cid, r.dump() + "\n", !it->second.session);
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
                ses_.request("kill", {{"process", p->first}, {"signal", SIGKILL}, {"all", true}});
        }
    clients_.erase(it);
}

void Shim::set_status(const char* st) {
    state_.status = st;
    if (auto r = write_state(paths_, state_); !r) log::error("write state: " + r.error().message);
}

std::string Shim::boot_failure(const std::string& why) {
    std::string tail = console_tail_;
    if (tail.empty()) {
        if (auto v = sys::read_file(paths_.vmm_log, 1 << 16); v && !v->empty())
            tail = v->substr(v->size() > 1024 ? v->size() - 1024 : 0);
    }
    // One line for the error message: newlines become '|', terminal escape
    // sequences (SeaBIOS clears the screen) and other controls go.
    std::string clean;
    for (size_t i = 0; i < tail.size(); ++i) {
        unsigned char c = static_cast<unsigned char>(tail[i]);
        if (c == 0x1b) {
            if (i + 1 < tail.size() && tail[i + 1] == '[') {
                i += 2;
                while (i < tail.size() && !(tail[i] >= '@' && tail[i] <= '~')) ++i;
            } else {
                ++i;
            }
        } else if (c == '\n') {
            if (!clean.empty() && clean.back() != '|') clean += '|';
        } else if (c >= 0x20 && c != 0x7f) {
            clean += char(c);
        }
    }
    while (!clean.empty() && clean.back() == '|') clean.pop_back();
    tail = clean;
    return why + (tail.empty() ? "; console is empty" : "; console tail: " + tail);
}

// The VMM is our only child: notice (and reap) its exit. Handed over, it
// is no longer our child: watch it by pid and start time.
void Shim::reap_vm() {
    int st;
    if (vm_ && !handed_over_ && ::waitpid(vm_->pid(), &st, WNOHANG) == vm_->pid()) {
        vm_.reset();  // already reaped
        vm_died_ = true;
    } else if (vm_ && handed_over_ && !sys::process_alive(state_.vmm_pid, state_.vmm_start)) {
        vm_.reset();
        vm_died_ = true;
    }
}

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

// Boot failed because of `why`. A channel that breaks during boot usually
// means the VM is dying: give it a second and, if so, say that instead.
void Shim::boot_failed(const std::string& why) {
    for (int i = 0; vm_ && i < 100; ++i) {
        reap_vm();
        if (!vm_died_) ::usleep(10000);
    }
    abort_create(Error{EIO, boot_failure(vm_died_ ? "vm exited before the agent answered" : why)});
}

void Shim::on_console_readable() {
    char buf[4096];
    ssize_t n = ::read(console_r_.get(), buf, sizeof buf);
    if (n <= 0) {
        console_r_.reset();
        return;
    }
    console_tail_.append(buf, size_t(n));
    if (console_tail_.size() > defaults::kConsoleTail)
        console_tail_.erase(0, console_tail_.size() - defaults::kConsoleTail);
    if (console_written_ < defaults::kConsoleLogMax) {
        (void)sys::write_all(console_log_.get(), buf, size_t(n));
        console_written_ += size_t(n);
    }
    if (!args_.log.debug) return;
    // Serial output arrives a few bytes at a time: log whole lines.
    for (ssize_t i = 0; i < n; ++i) {
        char c = buf[i];
        if (c == '\n' || console_line_.size() >= 4096) {
            log::debug("console: " + console_line_);
            console_line_.clear();
        } else if (c != '\r') {
            console_line_ += c;
        }
    }
}

Result<void> Shim::on_channel_readable() {
    char buf[64 << 10];
    ssize_t n = ::read(chan_.get(), buf, sizeof buf);
    if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) return {};
        return fail_errno("read channel");
    }
    if (n == 0) return fail("agent closed the channel", ECONNRESET);
    return ses_.feed(buf, size_t(n));
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
        json ex = p.sig ? json{{"signal", *p.sig}} : json{{"code", p.code.value_or(255)}};
        if (Member* m = member_of_proc(p.idx)) {
            m->exited = true;
            set_member_status(p.container, status::kStopped, p.sig ? std::nullopt : std::optional<int>(p.code.value_or(255)), p.sig);
        }
        uint64_t w = p.waiter;
        it = ses_.procs.erase(it);
        send_line(w, json{{"exit", ex}}.dump() + "\n", true);
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
        try {
            on_client_line(cid, line);
        } catch (const json::exception&) {
            // A field of the wrong type (json::value() throws): the client's
            // mistake, never the end of the container.
            reply(cid, false, "malformed request");
        }
    }
}

void Shim::on_client_line(uint64_t cid, const std::string& line) {
    auto& c = clients_[cid];
    json req = json::parse(line, nullptr, false);
    if (!req.is_object() || !req.contains("op") || !req["op"].is_string()) return reply(cid, false, "malformed request");
    std::string op = req["op"];
    bool live = ses_.phase == Phase::Created || ses_.phase == Phase::Running;
    if (c.session) {
        // An exec session: signals and window sizes for its process.
        auto p = ses_.procs.find(c.proc);
        if (p == ses_.procs.end() || p->second.exited) return;
        if (op == "signal" && req.contains("signal") && req["signal"].is_number_integer())
            ses_.request("kill", {{"process", c.proc}, {"signal", req["signal"].get<int>()}, {"all", false}});
        else if (op == "resize" && p->second.tty)
            ses_.request("resize", {{"process", c.proc}, {"rows", req.value("rows", 0)}, {"cols", req.value("cols", 0)}});
        return;
    }
    if (req.contains("container") && req["container"].is_string() && req["container"] != args_.id)
        return on_member_line(cid, op, req);
    if (op == "start") {
        if (ses_.phase != Phase::Created) return reply(cid, false, "container is not in created state");
        if (ses_.procs[0].tty) send_resize(0, tty_slave_.get());  // the caller's size, before the process looks
        ses_.request("start", {{"process", 0}}, cid);
    } else if (op == "kill") {
        if (ses_.phase == Phase::Exiting) return reply(cid, false, "container not running");
        if (!live) return reply(cid, false, "container is not created yet");
        int sig = req.value("signal", SIGTERM);
        json params = {{"process", 0}, {"signal", sig}, {"all", req.value("all", false)}};
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
    } else if (op == "pause" || op == "resume") {
        if (ses_.phase != Phase::Running) return reply(cid, false, "container is not running");
        if (paused_ == (op == "pause")) return reply(cid, false, std::string("container is ") + (paused_ ? "already paused" : "not paused"));
        auto r = set_paused(op == "pause");
        reply(cid, bool(r), r ? "" : r.error().message);
    } else if (op == "ps" || op == "update" || op == "stats") {
        // Questions for the guest, which cannot answer while paused.
        if (!live) return reply(cid, false, "container is not running");
        if (paused_) return reply(cid, false, "container is paused");
        std::optional<json> files;
        if (op == "update" && !(files = guest_update_files(req.value("files", json::array()), nullptr)))
            return reply(cid, false, "malformed request");
        json params = op == "ps"       ? json{{"process", 0}}
                      : op == "update" ? json{{"files", *files}}
                                       : json{{"files", stats_files()}};
        ses_.request(op, params, cid);
    } else if (op == "exec") {
        if (!live) return reply(cid, false, ses_.phase == Phase::Exiting ? "container is stopping" : "container is not created yet");
        start_exec(cid, req);
    } else {
        reply(cid, false, "unknown op " + op);
    }
}

// ---------------------------------------------------------------- pod members

Member* Shim::member_of_proc(uint32_t idx) {
    for (auto& [id, m] : members_)
        if (m.init == idx) return &m;
    return nullptr;
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
    Member* m = proc ? member_of_proc(proc) : nullptr;
    if (!m) return;
    std::string id;
    for (auto& [k, v] : members_)
        if (&v == m) id = k;
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
void Shim::on_member_line(uint64_t cid, const std::string& op, const json& req) {
    std::string id = req["container"];
    bool live = ses_.phase == Phase::Created || ses_.phase == Phase::Running || handed_over_;
    if (!live) return reply(cid, false, ses_.phase == Phase::Exiting ? "the pod's sandbox is stopping" : "the pod's sandbox is not created yet");
    if (handed_over_ && op == "create") return reply(cid, false, "the pod's sandbox has stopped: no container can join it");
    if (paused_) return reply(cid, false, "the pod's sandbox is paused");
    if (op == "create") return create_member(cid, id, req);
    auto it = members_.find(id);
    if (it == members_.end() || !it->second.created) return reply(cid, false, "container " + id + " is not in this sandbox");
    Member& m = it->second;
    auto init = ses_.procs.find(m.init);
    bool running = init != ses_.procs.end() && !init->second.exited;
    if (op == "remove") {
        // Its processes and group in the guest, then its share here.
        return (void)ses_.request("remove", {{"container", id}}, cid, m.init);
    }
    if (!running) return reply(cid, false, "container not running");
    if (op == "start") {
        if (m.started) return reply(cid, false, "container is not in created state");
        ses_.request("start", {{"process", m.init}}, cid, m.init);
    } else if (op == "kill") {
        ses_.request("kill", {{"process", m.init}, {"signal", req.value("signal", SIGTERM)}, {"all", req.value("all", false)}}, cid);
    } else if (op == "pause" || op == "resume") {
        bool on = op == "pause";
        if (m.paused == on) return reply(cid, false, std::string("container is ") + (on ? "already paused" : "not paused"));
        m.paused = on;  // as asked; the answer may still refuse it
        set_member_status(id, on ? status::kPaused : status::kRunning);
        ses_.request("freeze", {{"container", id}, {"frozen", on}}, cid, m.init);
    } else if (op == "ps" || op == "update" || op == "stats") {
        if (m.paused) return reply(cid, false, "container is paused");
        json params = {{"container", id}};
        if (op == "update") {
            auto files = guest_update_files(req.contains("files") ? req["files"] : json::array(), &m);
            if (!files) return reply(cid, false, "malformed request");
            params["files"] = *files;
        } else if (op == "stats") {
            params["files"] = stats_files();
        }
        ses_.request(op, params, cid);
    } else if (op == "exec") {
        if (m.paused) return reply(cid, false, "container is paused");
        start_exec(cid, req);
    } else {
        reply(cid, false, "unknown op " + op);
    }
}

// A container joins the sandbox: its rootfs and binds go under the share
// (shared/<id>/...), reaching the running VM; the agent builds it beside
// the others, in the namespaces it shares with them (req.join: type ->
// container id). Its stdio came as fds; this connection, from its relay,
// stays open as the session that gets its exit.
void Shim::create_member(uint64_t cid, const std::string& id, const json& req) {
    if (share_disk_) return reply(cid, false, "this sandbox's VM has its rootfs on a disk (" + hv_->name() +
                                                  "): no container can join it");
    if (!validate_id(id) || id == args_.id || members_.count(id)) return reply(cid, false, "container " + id + " is already in this sandbox");
    if (!req.contains("bundle") || !req["bundle"].is_string()) return reply(cid, false, "create: no bundle");
    const json join = req.contains("join") && req["join"].is_object() ? req["join"] : json::object();
    for (const auto& [type, target] : join.items()) {
        if (!target.is_string()) return reply(cid, false, "malformed request");
        std::string t = target;
        if (t != args_.id && !members_.count(t)) return reply(cid, false, "container " + t + " is not in this sandbox");
    }
    std::string bundle = req["bundle"];
    Member m;
    auto build = [&]() -> Result<json> {
        Spec spec = TRY(load_spec(bundle));
        if (!spec.process) return fail("config.json: process: required", EINVAL);
        auto cg = TRY(guest_cgroup_files(spec.resources.is_object() ? spec.resources : json::object(), "linux.resources"));
        for (const auto& w : cg.warnings) log::warn(id + ": " + w);
        translate_cpusets(cg.writes, vcpus_, guest_cpusets_);
        SharePlan plan = plan_shares(spec, bundle, [](const std::string& p) { return sys::is_dir(p); });
        for (auto& e : plan.entries) e.name = id + "/" + e.name;
        for (auto& n : plan.mount_share)
            if (!n.empty()) n = id + "/" + n;
        // The stdio first, then one tree per share entry.
        std::vector<sys::Fd> trees;
        auto& fds = clients_[cid].fds;
        size_t nstdio = spec.process->terminal ? 1 : 3;
        if (fds.size() < nstdio) return fail("expected its stdio", EINVAL);
        for (size_t i = nstdio; i < fds.size(); ++i) trees.push_back(std::move(fds[i]));
        fds.resize(nstdio);
        TRY_CTX(bind_shares(plan, &m.mounts, &trees), "share rootfs");
        json p = agent_create_params(spec, plan, cg);
        p["container"] = id;
        m.memory_mib = spec.memory_limit ? (uint64_t(*spec.memory_limit) + (1 << 20) - 1) >> 20 : defaults::kContainerMemoryMiB;
        // What it shares is the other container's; what it does not, its own.
        json own = json::array();
        for (const auto& n : p["namespaces"])
            if (!join.contains(n.get<std::string>())) own.push_back(n);
        p["namespaces"] = own;
        if (!join.empty()) p["join"] = join;
        for (const char* stage : {"createContainer", "startContainer"})
            if (auto it = spec.hooks.find(stage); it != spec.hooks.end() && !it->second.empty())
                p["hooks"][stage] = hooks_to_json(it->second);
        if (p.contains("hooks")) {
            auto st = TRY(read_state(state_paths(args_.root, id)));
            p["hook_state"] = oci_state(st);
            p["hook_state"]["status"] = status::kCreating;
        }
        return p;
    };
    auto params = build();
    if (!params) {
        unmount_member(m);
        return reply(cid, false, params.error().message);
    }
    uint32_t idx = next_proc_++;
    Proc& p = ses_.procs[idx];
    p.stdin_credit = ses_.stdin_window;
    p.idx = idx;
    p.tty = (*params)["process"].value("terminal", false);
    p.waiter = cid;
    p.container = id;
    if (auto r = setup_stdio(cid, p, p.tty); !r) {
        ses_.procs.erase(idx);
        unmount_member(m);
        return reply(cid, false, "create: " + r.error().message);
    }
    (*params)["process_index"] = idx;
    m.init = idx;
    members_[id] = std::move(m);
    fit_memory(id + " joins the pod");
    auto& c = clients_[cid];
    c.session = true;
    c.proc = idx;
    log::debug("pod: " + id + " joins sandbox " + args_.id + " as process " + std::to_string(idx));
    ses_.request("create", *params, cid, idx);
}

// A process's stdio from the fds that came with the client's request
// (stdin, stdout, stderr; one pty for a terminal).
Result<void> Shim::setup_stdio(uint64_t cid, Proc& p, bool tty) {
    auto& c = clients_[cid];
    if (c.fds.size() != (tty ? 1u : 3u)) return fail("expected " + std::string(tty ? "1 fd" : "3 fds"), EINVAL);
    auto setup = [&]() -> Result<void> {
        if (tty) {
            // The caller's pty slave: both directions, no stderr.
            TRY(sys::set_nonblock(c.fds[0].get(), true));
            p.in_own = TRY(sys::dup(c.fds[0].get()));
            p.out[1].own = std::move(c.fds[0]);
            p.out[2].eof = true;
        } else {
            p.in_own = std::move(c.fds[0]);
            p.out[1].own = std::move(c.fds[1]);
            p.out[2].own = std::move(c.fds[2]);
        }
        return {};
    };
    auto r = setup();
    c.fds.clear();
    TRY(r);
    p.in_fd = p.in_own.get();
    for (int i = 1; i <= 2; ++i) {
        p.out[i].fd = p.out[i].own ? p.out[i].own.get() : -1;
        p.out[i].stream = proto::stream_id(p.idx, uint32_t(i));
        if (!p.out[i].own) p.out[i].dead = true;
        else if (!tty) prepare_out(p.out[i]);
    }
    return {};
}

// An exec: its stdio came as fds. The connection stays open as the
// session that gets the exit. `container`: a pod member's id, or "".
void Shim::start_exec(uint64_t cid, const json& req) {
    auto& c = clients_[cid];
    if (!req.contains("process") || !req["process"].is_object()) return reply(cid, false, "exec: no process");
    std::string container = req.value("container", "");
    bool tty = req["process"].value("terminal", false);
    uint32_t idx = next_proc_++;
    Proc& p = ses_.procs[idx];
    p.stdin_credit = ses_.stdin_window;
    p.idx = idx;
    p.tty = tty;
    p.waiter = cid;
    p.container = container;
    if (auto r = setup_stdio(cid, p, tty); !r) {
        ses_.procs.erase(idx);
        return reply(cid, false, "exec: " + r.error().message);
    }
    c.session = true;
    c.proc = idx;
    ses_.request("exec", {{"process_index", idx}, {"process", req["process"]}, {"container", container.empty() ? args_.id : container}},
                 cid, idx);
}

// `update`'s cgroup writes as the guest must see them (its own vCPU ids);
// a new cpuset re-pins the VMM on the host. nullopt: not [[name, value]...].
// A memory limit past what the VM holds for the container grows the VM
// (fit_memory). `member`: a pod member's update (the VM's pinning is the
// sandbox's alone).
std::optional<json> Shim::guest_update_files(const json& files, Member* member) {
    if (!files.is_array()) return std::nullopt;
    std::vector<std::pair<std::string, std::string>> w;
    for (const auto& f : files) {
        if (!f.is_array() || f.size() != 2 || !f[0].is_string() || !f[1].is_string()) return std::nullopt;
        w.emplace_back(f[0], f[1]);
    }
    for (const auto& [k, v] : w)
        if (k == "cpuset.cpus" && vm_ && !member)
            if (auto r = pin_vmm(v); !r) log::warn("update: " + r.error().message);
    if (auto mib = memory_max_mib(files)) {
        if (member) member->memory_mib = *mib;
        else own_extra_mib_ = *mib + defaults::kMemoryOverheadMiB > vm_mib_ ? *mib + defaults::kMemoryOverheadMiB - vm_mib_ : 0;
        fit_memory("update");
    }
    translate_cpusets(w, vcpus_, guest_cpusets_);
    json out = json::array();
    for (const auto& [k, v] : w) out.push_back({k, v});
    return out;
}

// The MiB a [[file, value], ...] update's memory.max asks for, if a number.
std::optional<uint64_t> Shim::memory_max_mib(const json& files) {
    for (const auto& f : files)
        if (f.is_array() && f.size() == 2 && f[0] == "memory.max" && f[1].is_string()) {
            std::string v = f[1];
            if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
            return (std::stoull(v) + (1 << 20) - 1) >> 20;
        }
    return std::nullopt;
}

// Give the VM (virtio-mem) what its containers ask for beyond its boot
// size: a pod's members (rkt's rule: the sum of the apps' memory), and its
// first container's limit raised by update; up to hotplug_max_mib_. A host
// memory bound (the spec had a limit) is raised first, so the VMM is never
// pushed past it.
void Shim::fit_memory(const std::string& why) {
    if (!hotplug_max_mib_ || !vm_) return;
    uint64_t want = own_extra_mib_;
    for (const auto& [id, m] : members_) want += m.memory_mib;
    uint64_t block = defaults::kHotplugBlockMiB;
    want = std::min((want + block - 1) / block * block, hotplug_max_mib_);
    if (want == plugged_mib_) return;
    if (spec_.memory_limit && want > plugged_mib_) {
        uint64_t bound = (vm_mib_ + want + defaults::kVmmMemoryMiB) << 20;
        auto writes = host_cgroup_limits(json{{"memory", {{"limit", 1}}}}, bound, state_.cgroups,
                                         [](const std::string& p) { return sys::exists(p); });
        if (auto r = write_host_cgroup_limits(writes); !r) {
            log::warn("memory for " + why + ": " + r.error().message + "; the VM keeps " +
                      std::to_string(vm_mib_ + plugged_mib_) + " MiB");
            return;
        }
    }
    if (!memory_driver_asked_) {
        // The guest loads its virtio_mem driver now (not at boot); it plugs
        // what is requested whenever it comes.
        ses_.request("memory", json::object());
        memory_driver_asked_ = true;
    }
    if (auto r = vm_->set_hotplug_memory(want); !r) {
        log::warn("memory for " + why + ": " + r.error().message);
        return;
    }
    log::debug("vm memory: " + std::to_string(vm_mib_ + plugged_mib_) + " -> " + std::to_string(vm_mib_ + want) +
               " MiB (" + why + ")");
    plugged_mib_ = want;
}

// Every thread of the VMM's process tree (its jail's reaper, the VMM) on
// the host CPUs of `list`.
Result<void> Shim::pin_vmm(const std::string& list) {
    cpu_set_t set = TRY(cpu_set_of(list));
    std::vector<pid_t> todo = {vm_->pid()};
    while (!todo.empty()) {
        pid_t p = todo.back();
        todo.pop_back();
        std::string base = "/proc/" + std::to_string(p) + "/task";
        for (const auto& t : sys::list_dir(base).value_or(std::vector<std::string>{})) {
            pid_t tid = pid_t(std::atoi(t.c_str()));
            if (tid > 0 && ::sched_setaffinity(tid, sizeof set, &set) < 0 && errno != ESRCH)
                return fail_errno("pin the vm to CPUs " + list);
            std::string kids = sys::read_file(base + "/" + t + "/children").value_or("");
            for (size_t pos = 0; pos < kids.size();) {
                size_t e = kids.find(' ', pos);
                if (e == std::string::npos) e = kids.size();
                if (pid_t k = pid_t(std::atoi(kids.substr(pos, e - pos).c_str())); k > 0) todo.push_back(k);
                pos = e + 1;
            }
        }
    }
    return {};
}

// Stop or restart the vCPUs: the whole guest, agent included, freezes.
Result<void> Shim::set_paused(bool on) {
    if (!vm_) return fail("no vm", ESRCH);
    TRY_CTX(on ? vm_->pause() : vm_->resume(), on ? "pause vm" : "resume vm");
    paused_ = on;
    set_status(on ? status::kPaused : status::kRunning);
    return {};
}

void Shim::send_resize(uint32_t proc, int fd) {
    if (auto ws = sys::window_size(fd)) ses_.request("resize", {{"process", proc}, {"rows", ws->ws_row}, {"cols", ws->ws_col}});
}

void Shim::on_signal() {
    signalfd_siginfo si;
    while (::read(sig_fd_.get(), &si, sizeof si) == sizeof si) {
        int sig = int(si.ssi_signo);
        if (sig == SIGCHLD) continue;  // VMM liveness is checked every loop
        bool live = ses_.phase == Phase::Created || ses_.phase == Phase::Running;
        if (ses_.procs[0].tty) {
            // Our controlling terminal is the container's: a resize goes to
            // the guest pty; a hangup reaches the guest when the stream ends.
            if (sig == SIGWINCH && live) send_resize(0, tty_slave_.get());
            if (sig == SIGWINCH || sig == SIGHUP || sig == SIGCONT) continue;
        }
        // Signals sent to the shim go to the container, as with runc's init.
        if (live) ses_.request("kill", {{"process", 0}, {"signal", sig}, {"all", false}});
    }
}

void Shim::report_created() {
    state_.status = status::kCreated;
    if (auto r = write_state(paths_, state_); !r) abort_create(r.error());
    std::string ok = "ok\n";
    if (::write(args_.sync_fd, ok.data(), ok.size()) != ssize_t(ok.size())) creator_gone();
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
    if (args_.sync_fd >= 0) {
        std::string m = "error: " + e.message + "\n";
        (void)sys::write_all(args_.sync_fd, m);
    }
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

void Shim::read_stdin(Proc& p) {
    char buf[proto::kMaxDataPayload];
    size_t want = std::min<size_t>(sizeof buf, p.stdin_credit);
    ssize_t r = ::read(p.in_fd, buf, want);
    uint32_t s = proto::stream_id(p.idx, proto::Stdin);
    if (r > 0) {
        ses_.send(proto::encode(proto::Type::Data, s, std::string_view(buf, size_t(r))));
        p.stdin_credit -= uint32_t(r);
    } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {  // EIO: the pty's master is gone
        ses_.send(proto::encode(proto::Type::Close, s, ""));
        p.stdin_open = false;
    }
}

void Shim::write_out(Proc& p, int i) {
    auto& o = p.out[i];
    ssize_t w = o.sock ? ::send(o.fd, o.data.data(), o.data.size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                : o.nb ? ::write(o.nb.get(), o.data.data(), o.data.size())
                       : ::write(o.fd, o.data.data(), std::min(o.data.size(), o.chunk));
    if (w > 0) {
        o.data.erase(0, size_t(w));
        o.owed += uint32_t(w);
        if (o.owed >= shim::kCreditBatch || o.data.empty()) {
            ses_.send(proto::encode_credit(o.stream, o.owed));
            o.owed = 0;
        }
    } else if (w < 0 && errno != EINTR && errno != EAGAIN) {
        // Reader gone: keep draining the guest so it never blocks.
        ses_.send(proto::encode_credit(o.stream, uint32_t(o.owed + o.data.size())));
        o.owed = 0;
        o.data.clear();
        o.dead = true;
    }
}

// Propagate EOF once a stream is drained.
void Shim::close_drained(Proc& p) {
    for (int i = 1; i <= 2; ++i) {
        auto& o = p.out[i];
        if (!o.eof || !o.data.empty() || o.fd < 0) continue;
        o.nb.reset();  // the reader sees EOF only once every write end is closed
        if (o.own) {
            o.own.reset();
        } else {
            ::close(o.fd);
            int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (null >= 0 && null != o.fd) {  // keep fds 1/2 occupied
                dup2(null, o.fd);
                ::close(null);
            }
        }
        o.fd = -1;
        o.dead = true;
    }
}

Result<void> Shim::loop() {
    for (;;) {
        retire_execs();
        // Done: the container exited, what it wrote has been delivered, and
        // every exec has reported (or had its chance to).
        Proc& init = ses_.procs[0];
        bool execs_left = std::any_of(ses_.procs.begin(), ses_.procs.end(),
                                      [](const auto& kv) { return kv.first != 0 && kv.second.container.empty(); });
        if (!handed_over_ && ses_.phase == Phase::Exiting && init.drained() && ses_.out.empty() &&
            (!execs_left || Clock::now() >= ses_.exit_deadline)) {
            if (live_members()) handover();
            else if (init.sig) finish(0, *init.sig);
            else finish(init.code.value_or(255), 0);
        }
        if (handed_over_ && !live_members()) finish(0, 0);  // the pod's last container is gone: so is its VM
        if (vm_died_) {
            if (ses_.phase < Phase::Created) boot_failed("");
            if (handed_over_) log::debug("the pod's VM is gone");  // its sandbox was deleted
            else log::error(boot_failure("vm exited unexpectedly"));
            finish(255, 0);
        }

        std::vector<pollfd> p;
        enum Tag { kSig, kCon, kAgentL, kQmpL, kShimL, kChan, kStdin, kOut, kClient };
        struct T {
            Tag tag;
            uint64_t id;  // process index or client id
            int fd;       // 1/2 for kOut
        };
        std::vector<T> tags;
        auto add = [&](int fd, short ev, Tag t, uint64_t id = 0, int which = 0) {
            p.push_back({fd, ev, 0});
            tags.push_back({t, id, which});
        };
        add(sig_fd_.get(), POLLIN, kSig);
        if (console_r_) add(console_r_.get(), POLLIN, kCon);
        if (agent_listen_) add(agent_listen_.get(), POLLIN, kAgentL);
        if (qmp_listen_) add(qmp_listen_.get(), POLLIN, kQmpL);
        if (ses_.phase >= Phase::Created) add(shim_listen_.get(), POLLIN, kShimL);
        if (chan_) add(chan_.get(), short(POLLIN | (ses_.writable() ? POLLOUT : 0)), kChan);
        for (auto& [idx, pr] : ses_.procs) {
            bool reads = idx == 0 ? ses_.phase >= Phase::Created : pr.started;
            if (reads && pr.stdin_open && pr.stdin_credit > 0 && pr.in_fd >= 0) add(pr.in_fd, POLLIN, kStdin, idx);
            for (int i = 1; i <= 2; ++i)
                if (!pr.out[i].data.empty() && !pr.out[i].dead) add(pr.out[i].fd, POLLOUT, kOut, idx, i);
        }
        // A closing client is only written to; one whose replies pile up
        // is not read until it takes them.
        for (auto& [cid, c] : clients_)
            add(c.fd.get(), short((c.closing || !c.out.empty() ? 0 : POLLIN) | (c.out.empty() ? 0 : POLLOUT)), kClient, cid);

        int timeout = -1;
        if (ses_.phase == Phase::Booting) {
            auto left = ms_until(boot_deadline_);
            if (left <= 0)
                abort_create(Error{ETIMEDOUT, boot_failure("the agent did not answer within " +
                                                           std::to_string(boot_timeout_ms_ / 1000.0).substr(0, 5) + "s")});
            bool dials = vsock_cid_ || !hybrid_vsock_.empty();  // we connect to the agent, retrying
            timeout = int(std::min<long long>(left, dials ? 50 : 250));
            if (dials && !chan_ && Clock::now() >= next_vsock_try_) {
                auto c = vsock_cid_ ? vsock_connect(vsock_cid_, proto::kAgentVsockPort)
                                    : hybrid_vsock_connect(hybrid_vsock_, proto::kAgentVsockPort, 1000);
                if (c) chan_ = std::move(*c);  // non-blocking
                next_vsock_try_ = Clock::now() + std::chrono::milliseconds(50);
            }
        } else if (ses_.phase == Phase::Exiting) {
            timeout = 250;  // the exec grace period
        }
        if (kill_deadline_ && ses_.phase != Phase::Exiting) {
            auto left = ms_until(*kill_deadline_);
            if (left <= 0) {
                log::warn("the guest did not act on SIGKILL within " + std::to_string(defaults::kGuestKillTimeoutMs / 1000) +
                          " s: stopping its VM");
                ses_.answer_pending("kill", status_reply(true));  // killed it is
                finish(0, SIGKILL);
            }
            timeout = timeout < 0 ? int(left) : std::min(timeout, int(left));
        }
        int n = ::poll(p.data(), p.size(), timeout);
        if (n < 0 && errno != EINTR) return fail_errno("poll");

        reap_vm();
        if (n <= 0) continue;

        for (size_t i = 0; i < p.size(); ++i) {
            if (!p[i].revents) continue;
            auto t = tags[i];
            switch (t.tag) {
                case kSig: on_signal(); break;
                case kCon: on_console_readable(); break;
                case kAgentL:
                    chan_ = TRY(sys::accept(agent_listen_.get(), SOCK_NONBLOCK));
                    agent_listen_.reset();
                    ::unlink(paths_.agent_sock.c_str());
                    break;
                case kQmpL: {
                    auto c = TRY(sys::accept(qmp_listen_.get()));
                    qmp_listen_.reset();
                    ::unlink(paths_.qmp_sock.c_str());
                    // A VMM that dies while it starts (a refused option) says why in its log.
                    if (vm_)
                        if (auto r = vm_->attach_control(c.release()); !r) boot_failed("qmp: " + r.error().message);
                    break;
                }
                case kShimL: {
                    auto c = sys::accept(shim_listen_.get());
                    if (c) clients_[next_client_++].fd = std::move(*c);
                    break;
                }
                case kChan:
                    if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                        auto r = on_channel_readable();
                        if (!r) {
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
                    if (chan_ && (p[i].revents & POLLOUT) && ses_.writable()) {
                        ssize_t w = ::write(chan_.get(), ses_.out.data(), ses_.writable());
                        if (w > 0) {
                            ses_.out.erase(0, size_t(w));
                            if (ses_.channel_window) ses_.channel_credit -= uint32_t(w);
                        }
                    }
                    if (boot_images_held_ && ses_.out.empty()) release_boot_images();
                    break;
                case kStdin:
                    if (auto it = ses_.procs.find(uint32_t(t.id)); it != ses_.procs.end()) read_stdin(it->second);
                    break;
                case kOut:
                    if (auto it = ses_.procs.find(uint32_t(t.id)); it != ses_.procs.end()) write_out(it->second, t.fd);
                    break;
                case kClient:
                    if (clients_.count(t.id) && (p[i].revents & POLLOUT)) flush_client(t.id);
                    if (clients_.count(t.id) && (p[i].revents & (POLLIN | POLLHUP | POLLERR)) && !clients_[t.id].closing &&
                        clients_[t.id].out.empty())
                        on_client(t.id);
                    else if (clients_.count(t.id) && (p[i].revents & (POLLHUP | POLLERR)))
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
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGALRM, SIGCONT, SIGWINCH, SIGTSTP,
                  SIGTTIN, SIGTTOU})
        sigaddset(&mask, s);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    sig_fd_ = sys::Fd(signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC));
    if (!sig_fd_) abort_create(Error{errno, "signalfd failed"});

    if (auto r = prepare(); !r) abort_create(r.error());
    auto r = loop();
    log::error("shim: " + r.error().message);
    if (ses_.phase < Phase::Created) abort_create(r.error());
    finish(255, 0);
}

}  // namespace

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
