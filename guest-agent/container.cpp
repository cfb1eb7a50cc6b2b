// The two ways into a container in the cloned child: container_init (a
// new container: namespaces, its filesystem, then its process) and
// exec_init (a process that joins one); container.h.
#include "guest-agent/child.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <linux/capability.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <csignal>
#include <cstring>
#include <map>
#include <memory>
#include <optional>

#include "husk/hooks.h"
#include "sys/sys.h"

namespace husk::agent {

using nlohmann::json;

int clone_flags(const proto::Create& params) {
    int f = CLONE_NEWNS;
    for (const auto& t : params.namespaces) {
        if (t == "pid") f |= CLONE_NEWPID;
        else if (t == "uts") f |= CLONE_NEWUTS;
        else if (t == "ipc") f |= CLONE_NEWIPC;
    }
    return f;
}

// The user namespace comes last, once the container is built: mounts,
// device nodes, sysctls and pivot_root were done as the guest's root, as
// runc's init does them before it drops into the namespace's view. The
// container then gets mount, uts and cgroup namespaces of its own inside
// it (copies of what was built, every mount locked as it is), so its root
// may mount, set the hostname and so on there, as in runc's containers.
// The agent writes the id maps between "U" and "M".
void enter_userns(const proto::Create& params, int sync_fd) {
    if (::unshare(CLONE_NEWUSER) < 0) die(sync_fd, std::string("unshare user namespace: ") + strerror(errno));
    char c = 0;
    if (::write(sync_fd, "U", 1) != 1 || ::read(sync_fd, &c, 1) != 1 || c != 'M') _exit(1);
    if (::setresgid(0, 0, 0) < 0 || ::setresuid(0, 0, 0) < 0)
        die(sync_fd, std::string("become root of the user namespace: ") + strerror(errno));
    int again = CLONE_NEWNS;
    for (const auto& n : params.namespaces) {
        if (n == "uts") again |= CLONE_NEWUTS;
        if (n == "cgroup") again |= CLONE_NEWCGROUP;
    }
    if (::unshare(again) < 0) die(sync_fd, std::string("unshare in the user namespace: ") + strerror(errno));
}

// The init's terminal, from the container's own devpts, is its
// /dev/console: runc's mountConsole, a bind of the pty's peer (made if the
// spec's /dev lacks the node), before the root or /dev goes read-only.
sys::Pty open_console(int sync_fd) {
    auto p = sys::open_pty("/dev/ptmx");
    if (!p) die(sync_fd, "terminal: " + p.error().message + " (the container needs /dev/pts and /dev/ptmx)");
    if (!sys::exists("/dev/console")) {
        int fd = ::open("/dev/console", O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) die(sync_fd, std::string("terminal: create /dev/console: ") + strerror(errno));
        ::close(fd);
    }
    auto r = sys::mount(p->name, "/dev/console", "", MS_BIND);
    if (!r) die(sync_fd, "terminal: bind /dev/console: " + r.error().message);
    return std::move(*p);
}

void container_init(const proto::Create& params, const std::vector<std::pair<int, int>>& joins, int sync_fd, const Stdio& io) {
    reset_signals();
    for (auto [fd, flag] : joins) {
        if (::setns(fd, flag) < 0) die(sync_fd, std::string("join a namespace of the pod: ") + strerror(errno));
        ::close(fd);
    }
    // A new cgroup namespace here, not in clone(): its root must be the
    // container's group, which clone3 placed us in after copying namespaces.
    for (const auto& n : params.namespaces)
        if (n == "cgroup" && ::unshare(CLONE_NEWCGROUP) < 0) die(sync_fd, std::string("unshare cgroup: ") + strerror(errno));

    CHECK(sys::mount("", "/", "", MS_REC | MS_PRIVATE));
    std::optional<sys::Pty> console;
    CHECK(sys::mkdir_p(kContainerRoot, 0755));
    std::string share_root = std::string(kShareMount) + "/" + params.root_share;
    CHECK(sys::mount(share_root, kContainerRoot, "", MS_BIND | MS_REC));

    {
        auto root = CHECK(sys::open(kContainerRoot, O_PATH | O_DIRECTORY));
        bool dev_tmpfs = false;
        unsigned long dev_ro = 0;
        for (const auto& m : params.mounts) {
            auto r = do_mount(root.get(), m, dev_ro);
            if (!r) die(sync_fd, "mount " + m.destination + ": " + r.error().message);
            if (m.destination == "/dev" && m.type == "tmpfs") dev_tmpfs = true;
        }
        CHECK(sys::chdir(kContainerRoot));
        CHECK(sys::pivot_root(".", "."));
        CHECK(sys::umount(".", MNT_DETACH));
        CHECK(sys::chdir("/"));
        if (dev_tmpfs) CHECK(populate_dev());
        CHECK(make_devices(params.devices));
        if (params.process.terminal) console = open_console(sync_fd);
        if (dev_ro) CHECK(sys::mount("", "/dev", "", dev_ro));
    }

    const std::string& hostname = params.hostname;
    if (!hostname.empty() && sethostname(hostname.c_str(), hostname.size()) < 0)
        die(sync_fd, std::string("sethostname: ") + strerror(errno));
    // The guest kernel is the container's own: every sysctl is its to set.
    for (const auto& [k, v] : params.sysctl) {
        std::string path = "/proc/sys/" + k;
        for (size_t i = 10; i < path.size(); ++i)
            if (path[i] == '.') path[i] = '/';
        auto r = sys::write_file(path, v);
        if (!r) die(sync_fd, "sysctl " + k + ": " + r.error().message);
    }
    // runc's order: read-only paths, then masks (a mask over a read-only
    // path, such as a /proc/sys entry, stays a mask).
    for (const auto& p : params.readonly_paths) {
        auto r = readonly_path(p);
        if (!r) die(sync_fd, "readonly " + p + ": " + r.error().message);
    }
    for (const auto& p : params.masked_paths) {
        auto r = mask_path(p);
        if (!r) die(sync_fd, "mask " + p + ": " + r.error().message);
    }
    // createContainer hooks: in the container's namespaces, like runc's;
    // but the only filesystem a guest has is the container's, so their
    // paths resolve there (after pivot_root, where runc is still before).
    const json state = params.hook_state.value_or(json::object());
    if (auto h = params.hooks.find("createContainer"); h != params.hooks.end()) {
        auto r = run_hooks(h->second, "createContainer", state);
        if (!r) die(sync_fd, r.error().message);
    }
    const std::string& cwd = params.process.cwd;
    if (!sys::is_dir(cwd)) CHECK(sys::mkdir_p(cwd, 0755));  // as runc, before the root goes read-only
    if (params.root_readonly) CHECK(sys::mount("", "/", "", MS_BIND | MS_REMOUNT | MS_RDONLY));
    if (params.userns) enter_userns(params, sync_fd);
    std::optional<StartHooks> start_hooks;
    if (auto h = params.hooks.find("startContainer"); h != params.hooks.end()) {
        start_hooks = StartHooks{h->second, state};
        start_hooks->state["status"] = "created";
    }
    run_process(params.process, params.seccomp, sync_fd, io, start_hooks, std::move(console));
}

void exec_init(const proto::Process& proc, const std::optional<proto::Seccomp>& seccomp, bool userns, pid_t init_pid,
               int sync_fd, const Stdio& io) {
    reset_signals();
    // The pid namespace was entered by the agent before clone(); join the
    // rest of the init's. Open them all first: after setns(mnt), /proc is
    // the container's.
    // The user namespace last: the guest's root may enter the others from
    // outside it, and inside it could not enter those it does not own.
    static const std::pair<const char*, int> kinds[] = {{"ipc", CLONE_NEWIPC},
                                                        {"uts", CLONE_NEWUTS},
                                                        {"cgroup", CLONE_NEWCGROUP},
                                                        {"mnt", CLONE_NEWNS},
                                                        {"user", CLONE_NEWUSER}};
    std::vector<std::pair<sys::Fd, int>> ns;
    for (auto [name, flag] : kinds) {
        if (flag == CLONE_NEWUSER && !userns) continue;
        ns.emplace_back(CHECK(sys::open("/proc/" + std::to_string(init_pid) + "/ns/" + name, O_RDONLY)), flag);
    }
    for (auto& [fd, flag] : ns)
        if (::setns(fd.get(), flag) < 0) die(sync_fd, std::string("setns: ") + strerror(errno));
    ns.clear();
    run_process(proc, seccomp, sync_fd, io);
}

}  // namespace husk::agent
