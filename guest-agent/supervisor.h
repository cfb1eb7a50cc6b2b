// The agent's supervisor: the processes it runs for the shim, their
// streams, and the requests that make them (requests.cpp), relayed over
// the channel by its loop (supervisor.cpp). main.cpp opens the channel.
#pragma once
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
#include "protocol/agent.h"
#include "protocol/messages.h"
#include "protocol/protocol.h"
#include "sys/netlink.h"
#include "sys/sys.h"

namespace husk::agent {

using nlohmann::json;

// How long virtio_net may take to probe the NICs the shim announced.
constexpr int kNicTimeoutMs = 60000;
constexpr int kPipeSize = 1 << 20;  // a process's stdio pipes (the default is 64 KiB)
constexpr std::chrono::seconds kUnpinDelay{2};  // a removed container's mounts are let go of (requests.cpp: mount_pin)


// What a process writes (stdout, stderr, a preserved fd it writes),
// read from our end and sent within the shim's credit.
struct Stream {
    sys::Fd fd;
    proto::SendCredit credit{};  // what we may send
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
    // Its peer, held until the process exits: a process that closes its
    // stdio (systemd as an init does, opening /dev/console only to write)
    // leaves the peer unopened for a while, and the master would read EIO,
    // ending the stream, though the process is alive.
    sys::Fd tty_peer;
    bool killed = false;
    std::map<uint32_t, Stream> out;
    std::map<uint32_t, Input> in;
    std::optional<int> status;
    bool exit_sent = false;

    bool outputs_closed() const {
        return std::all_of(out.begin(), out.end(), [](const auto& kv) { return kv.second.eof; });
    }
};

// The pid namespace the agent's children are born in (setns(CLONE_NEWPID)
// moves only them) while this lives: back to the agent's own when it
// goes, whichever way the scope is left.
class ChildPidns {
public:
    static Result<ChildPidns> enter(int ns, int own) {
        if (::setns(ns, CLONE_NEWPID) < 0) return fail_errno("setns pid");
        return ChildPidns(own);
    }
    ChildPidns(ChildPidns&& o) noexcept : own_(std::exchange(o.own_, -1)) {}
    ChildPidns& operator=(ChildPidns&&) = delete;
    ~ChildPidns() {
        if (own_ >= 0 && ::setns(own_, CLONE_NEWPID) < 0) fatal(std::string("setns back to own pid ns: ") + strerror(errno));
    }

private:
    explicit ChildPidns(int own) : own_(own) {}
    int own_;
};

// One container of the sandbox: the first (its init is process 0) or one
// that joined it. Its processes are in procs_, tagged with its id.
struct Container {
    uint32_t init = 0;  // process index of its init
    std::optional<proto::Seccomp> seccomp;  // execs get the container's profile too
    bool userns = false;
    std::string cgroup_dir;  // "" without a cgroup
    sys::Fd cgroup;  // every process of it is born there
    // Its mount namespace, held by the agent (see mount_pin in requests.cpp).
    sys::Fd mounts;
};

class Agent {
public:
    Agent(sys::Fd chan, sys::Fd own_pidns, bool ack_reads)
        : chan_(std::move(chan)), own_pidns_(std::move(own_pidns)), ack_reads_(ack_reads) {}
    Result<void> run();

private:
    void send(const std::string& f) { out_.append(f); }
    void respond(uint64_t id, const Result<json>& r) {
        proto::Response out{id, bool(r), r ? "" : r.error().message, r ? std::optional<json>(*r) : std::nullopt};
        send(proto::encode(proto::Type::Response, 0, proto::to_json(out).dump()));
    }
    Result<void> on_frame(const proto::Frame& f);
    void on_request(const proto::Request& req);
    Result<json> do_create(const proto::Create& params);
    Result<json> do_start(const proto::Start& params);
    Result<void> release(Process& p);
    Result<json> do_kill(const proto::Kill& params);
    Result<json> do_exec(const proto::Exec& params);
    Result<json> do_resize(const proto::Resize& params);
    Result<json> do_ps(const proto::Target& params);
    Result<json> do_update(const proto::Target& params);
    Result<json> do_stats(const proto::Target& params);
    Result<json> do_remove(const proto::Target& params);
    Result<json> do_freeze(const proto::Target& params);
    Result<json> do_attach(const json& params);
    Result<json> do_memory();
    Result<json> do_resume(const proto::Resume& params);
    Result<Container*> container_of(const std::string& id);
    Result<pid_t> running_init(const Container& c);
    std::vector<pid_t> pids_of(const Container& c);
    Result<Process> spawn(const proto::Process& proc, int flags, const std::function<void(int, const agent::Stdio&)>& child,
                          const std::optional<proto::UserNs>& userns = std::nullopt, int cgroup = -1);
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
    // Removed containers' mount namespaces, let go of a while later
    // (mount_pin in requests.cpp).
    struct Unpin {
        sys::Fd mounts;
        std::chrono::steady_clock::time_point at;
    };
    std::vector<Unpin> unpins_;
    void release_pins();
    int pin_timeout_ms() const;
    // Updates that wait for their vCPUs to come online (park_update).
    struct Parked {
        uint64_t id;
        proto::Target params;
        pid_t pid;  // the child onlining them
    };
    std::vector<Parked> parked_;
    bool park_update(uint64_t id, const proto::Target& params);
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

}  // namespace husk::agent
