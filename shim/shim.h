// husk-shim: one class (Shim) along its seams, one file each:
//   shim.cpp      the creator link (sync socket, hooks), signals, the
//                 poll loop, teardown, main()
//   vm_owner.cpp  host sandbox (netns, taps, shares, terminal) and the VM:
//                 launch, boot deadline, console, reaping, pause, memory
//   control.cpp   shim.sock: clients, replies, exec sessions, update
//   members.cpp   pod members: create, routing, lifetimes, handover
//   stdio.cpp     the stdio relay: stdin to the guest, output with credit
#pragma once
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/random.h>
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
#include "husk/checkpoint.h"
#include "husk/config.h"
#include "husk/defaults.h"
#include "husk/hooks.h"
#include "husk/hypervisor.h"
#include "husk/log.h"
#include "husk/network.h"
#include "husk/paths.h"
#include "husk/preserved_fds.h"
#include "husk/sandbox.h"
#include "husk/spec.h"
#include "husk/signals.h"
#include "husk/state.h"
#include "husk/system_image.h"
#include "husk/vm_template.h"
#include "protocol/creator.h"
#include "protocol/protocol.h"
#include "shim/session.h"
#include "sys/poll_set.h"
#include "shim/timeline.h"
#include "husk/disk_image.h"
#include "hypervisors/virtiofsd.h"
#include "hypervisors/vsock.h"
#include "sys/netlink.h"
#include "sys/sys.h"

namespace husk::shimd {

using nlohmann::json;
using shim::Clock;
using shim::Phase;
using shim::Proc;
using shim::ms_since;
using shim::status_reply;

// A destination for a process's output that never blocks the loop (shim.cpp).
bool prepare_out(shim::OutBuf& o);
// A CPU list ("0-1,3") as sched_setaffinity takes it.
Result<cpu_set_t> cpu_set_of(const std::string& list);

struct Args {
    std::string root, id, bundle, console_socket;
    std::vector<std::string> annotations;  // --annotation KEY=VALUE (husk's own, under the bundle's)
    int sync_fd = -1;
    bool wait_hooks = false;  // husk runs create hooks before we start the VM
    int preserve_fds = 0;     // fds 3.. are the container's (--preserve-fds)
    std::string hypervisor = "qemu";  // husk create chose it (choose_hypervisor)
    std::string restore;      // husk restore: the checkpoint image to load (husk/checkpoint.h)
    log::Config log;
};

Result<Args> parse_args(int argc, char** argv);


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
inline constexpr size_t kClientOutMax = 64u << 20;

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
    SandboxPaths sandbox_paths() const;
    Result<void> start_vmm(bool templates);
    Result<proto::Attach> attach_template();
    Result<proto::Attach> template_hello() override;
    void attach_restored();
    void attach_restored_vsock();
    bool restore_failed(const std::string& why);
    // SessionHost: what the agent session asks of us.
    void booted() override;
    void release_boot_images();
    proto::Create create_params() override;
    void created(bool ok, const std::string& error) override;
    void running() override { set_status(status::kRunning); }
    void busy(uint64_t client) override;
    void answered(const std::string& method, uint32_t proc, bool ok) override;
    Result<void> bind_shares(SharePlan& plan, std::vector<std::string>* made, std::vector<sys::Fd>* trees = nullptr);
    void on_member_line(uint64_t cid, const proto::ControlRequest& req);
    void create_member(uint64_t cid, const proto::ControlRequest& req);
    Result<std::vector<std::string>> setup_stdio(uint64_t cid, Proc& p, bool tty, int preserve_fds);
    Result<std::vector<std::string>> setup_extra_fds(Proc& p, std::vector<sys::Fd> fds);
    uint32_t new_proc_index();
    void unmount_member(Member& m);
    Member* member_of_proc(uint32_t idx);
    std::map<std::string, Member>::iterator member_entry_of_proc(uint32_t idx);
    void set_member_status(const std::string& id, const char* st, std::optional<int> code = {}, std::optional<int> sig = {});
    void fit_memory(const std::string& why);
    void fit_vcpus(const std::vector<std::pair<std::string, std::string>>& w);
    std::optional<uint64_t> memory_max_mib(const std::vector<std::pair<std::string, std::string>>& files);
    Result<void> loop();
    Result<void> on_channel_readable();
    void on_console_readable();
    void on_client(uint64_t cid);
    void on_client_line(uint64_t cid, const std::string& line);
    void start_exec(uint64_t cid, const proto::ControlRequest& req);
    void on_signal();
    void send_resize(uint32_t proc, int fd);
    Result<void> set_paused(bool on);
    std::vector<std::pair<std::string, std::string>> guest_update_files(std::vector<std::pair<std::string, std::string>> files,
                                                                        Member* member);
    Result<void> pin_vmm(const std::string& list);
    // husk checkpoint / restore (checkpoint.cpp).
    std::string checkpoint_refusal() const;
    void start_checkpoint(uint64_t cid, const proto::ControlRequest& req);
    void checkpoint_answered(const std::string& method, bool ok);
    Result<checkpoint::DumpStats> save_checkpoint();
    Result<checkpoint::DumpStats> write_checkpoint(bool& saved);
    Result<void> prepare_restore(HostFacts& host);
    Result<void> resumed(const proto::Resumed& r) override;
    void reply(uint64_t cid, const proto::ControlReply& r) override;
    void reply(uint64_t cid, bool ok, const std::string& err = "");
    void drop_client(uint64_t cid);
    void send_line(uint64_t cid, const std::string& line, bool last);
    void flush_client(uint64_t cid);
    void read_in(Proc& p, uint32_t fd);
    void write_out(Proc& p, uint32_t fd);
    void flush_outputs(std::chrono::milliseconds limit);
    void close_drained(Proc& p);
    void retire_execs();
    std::string boot_failure(const std::string& why);
    void reap_vm();
    [[noreturn]] void boot_failed(const std::string& why);
    void report_created(const char* st = status::kCreated);
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
    HostFacts host_;  // what the VM is made from (launch_vm), for each start_vmm
    // VM templates (husk/vm_template.h): the shape of ours ("" when the VM
    // is not template-shaped), where it is kept, and its name; why the VM
    // has none (when it has none).
    std::string template_shape_, template_dir_, template_key_, template_why_;
    std::string channel_why_;  // why not husk-vsock's device, where it could be
    // The image's own kernel (org.husk.kernel: its path in the rootfs), and
    // the signal a SIGTERM for its init becomes (system_image.h).
    std::string image_kernel_;
    std::optional<int> poweroff_signal_;
    bool making_template_ = false;  // booting to save the template at its HELLO
    // A checkpoint in progress (the agent quiesced, the VM saved, then
    // resumed or stopped), for the client that asked.
    struct CheckpointJob {
        uint64_t client = 0;
        std::string dir;
        bool leave_running = false;
        std::string error;  // the save failed: said once the guest relays again
        Clock::time_point began;
        checkpoint::DumpStats stats;  // the save's figures, for the reply
    };
    std::optional<CheckpointJob> checkpoint_;
    std::string vm_shape_;             // Hypervisor::vm_shape of our VM (a template's clone: of the same bundle booted)
    checkpoint::Info restore_info_;    // what --restore loads
    sys::Fd checkpoint_state_;         // ... its VM state, open for the VMM
    bool resuming_ = false;            // the VMM loads the checkpoint; its agent is not yet resumed
    bool restoring_ = false;        // the VMM restores the template
    bool attached_ = false;         // the restored guest was sent its attach
    bool qmp_attached_ = false;
    bool relaunched_ = false;       // the loop's fds are stale: a new VMM replaced the last
    Clock::time_point launched_at_;
    shim::Timeline timeline_;  // --debug: the start, step by step
    bool boot_images_held_ = false;  // the guest booted; its VMM still holds the boot images
    shim::Session ses_{*this};  // the agent protocol: phase, requests, processes
    sys::Fd agent_listen_, qmp_listen_, shim_listen_, chan_, console_r_, console_w_, sig_fd_, console_log_;
    unsigned vcpus_ = 1, max_vcpus_ = 1;  // the guest's online vCPUs, and all the VM has
    VcpuWants vcpu_wants_;               // what the container's CPU limits ask for (update changes them)
    bool guest_cpusets_ = true;
    uint32_t vsock_cid_ = 0;
    std::string hybrid_vsock_;  // the VMM's hybrid vsock socket, when that is the channel
    Clock::time_point boot_deadline_;
    int boot_timeout_ms_ = 0;
    Clock::time_point next_vsock_try_;
    std::optional<VsockDial> dial_;  // a dial of the agent waiting for its answer
    // A template's clone given husk-vsock's device once restored (start_vmm):
    // plugged in yet (the dial waits for it), the template's virtio-serial
    // port (idle), and the attach that goes over vsock once it answers.
    bool plug_vsock_ = false, vsock_plugged_ = false;
    sys::Fd serial_idle_;
    std::optional<proto::Attach> pending_attach_;
    Clock::time_point dial_deadline_;
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
    std::vector<std::string> init_extra_fds_;  // the init's preserved fds, as the agent is told
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

}  // namespace husk::shimd
