// `husk create` of a container that joins a running sandbox's VM (a pod
// member, husk/pod.h): no shim and no VM of its own. Its host process is a
// relay (husk/relay.h) forked here, which callers wait on as they would on
// runc's init: it hands the member's stdio and bundle to the sandbox's
// shim, which binds the member's rootfs into the running VM's share and has
// the agent build it there, and it exits with the member's status.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "husk/cgroups.h"
#include "husk/console.h"
#include "husk/hooks.h"
#include "husk/lifecycle.h"
#include "husk/preserved_fds.h"
#include "husk/relay.h"
#include "husk/sandbox.h"
#include "husk/shim_client.h"
#include "husk/signals.h"
#include "protocol/creator.h"
#include "sys/sys.h"

namespace husk {

using nlohmann::json;

std::optional<std::pair<dev_t, ino_t>> namespace_identity(const std::string& path) {
    struct stat st;
    if (::stat(path.c_str(), &st) < 0) return std::nullopt;
    return std::make_pair(st.st_dev, st.st_ino);
}

Result<std::vector<PodPeer>> pod_peers(const Globals& g) {
    std::vector<PodPeer> out;
    for (const auto& s : TRY(list_containers(g))) {
        std::string st = effective_status(s);
        if (st != status::kCreated && st != status::kRunning && st != status::kPaused) continue;
        PodPeer p{s.id, s.pid, s.sandbox, std::nullopt};
        if (s.sandbox.empty()) p.netns = namespace_identity("/proc/" + std::to_string(s.pid) + "/ns/net");
        out.push_back(p);
    }
    return out;
}

Result<pid_t> create_member(const Globals& g, const std::string& id, const std::string& bundle, const Spec& spec,
                            const PodJoin& pod, const CreateOptions& o) {
    for (const auto& [type, with] : pod.join) log::debug("create " + id + ": shares the " + type + " namespace of " + with);
    log::debug("create " + id + ": joins the VM of sandbox " + pod.sandbox);
    // The sandbox stays as it is while we join it (a `delete` of it waits).
    auto sb_paths = state_paths(g.root, pod.sandbox);
    auto sb_lock = TRY_CTX(ContainerLock::acquire(sb_paths), "sandbox " + pod.sandbox);
    auto sb = TRY_CTX(read_state(sb_paths), "sandbox " + pod.sandbox);
    if (std::string s = effective_status(sb); s != status::kCreated && s != status::kRunning)
        return fail("sandbox " + pod.sandbox + " is " + s + ": no container can join it", EINVAL);

    auto nc = TRY(begin_container(g, id, bundle, spec));
    auto& paths = nc.paths;
    auto& st = nc.st;
    st.sandbox = pod.sandbox;  // its host cgroup holds its relay (callers find the group from its pid)
    pid_t relay = -1;
    auto cleanup = [&](Error e) -> Result<pid_t> {
        if (relay > 0) {
            ::kill(relay, SIGKILL);
            ::waitpid(relay, nullptr, 0);
        }
        nc.undo();
        return tl::unexpected(std::move(e));
    };

    // Its rootfs and bind sources as we see them (podman mounts a member's
    // overlay rootfs in a mount namespace the sandbox's shim no longer
    // follows): detached copies of each tree, which the shim attaches
    // under its share in the order it plans them too.
    SharePlan plan = plan_shares(spec, bundle, [](const std::string& p) { return sys::is_dir(p); });
    if (plan.entries.size() + 3 > sys::kMaxPassedFds)
        return cleanup(Error{E2BIG, "config.json: mounts: at most " + std::to_string(sys::kMaxPassedFds - 4) +
                                        " bind mounts in a container that joins a pod"});
    std::vector<sys::Fd> trees;
    for (size_t i = 0; i < plan.entries.size(); ++i) {
        const auto& e = plan.entries[i];
        auto t = sys::open_tree_clone(e.host_path, e.recursive);
        if (!t) {
            std::string what = i == 0 ? "rootfs " : "mount source ";
            return cleanup(t.error().code == ENOENT ? Error{ENOENT, what + e.host_path + " does not exist"}
                                                    : t.error().context(what + e.host_path));
        }
        trees.push_back(std::move(*t));
    }
    // After its stdio: the preserved fds, then one tree per share entry.
    std::vector<int> tree_fds = preserved_fds(o.preserve_fds);
    for (auto& t : trees) tree_fds.push_back(t.get());
    proto::ControlRequest req{.op = proto::Op::Create,
                              .container = id,
                              .preserve_fds = o.preserve_fds,
                              .bundle = bundle,
                              .join = pod.join,
                              .trees = uint32_t(trees.size()),
                              .annotations = TRY(parse_annotation_args(g.annotations))};
    std::string console = o.console_socket.empty() ? "" : TRY(absolute(o.console_socket));
    std::string netns;
    for (const auto& n : spec.namespaces)
        if (n.type == "network") netns = n.path;
    auto pipes = sys::pipe(O_CLOEXEC);
    if (!pipes) return cleanup(pipes.error());
    auto go = sys::pipe(O_CLOEXEC);
    if (!go) return cleanup(go.error());
    auto& [rd, wr] = *pipes;
    auto& [go_r, go_w] = *go;
    relay = ::fork();
    if (relay < 0) return cleanup(Error{errno, "fork relay"});
    if (relay == 0) {
        rd.reset();
        go_w.reset();
        // The locks stay with husk create: a relay holding them would keep
        // the sandbox locked for as long as the member lives.
        ::close(sb_lock.fd());
        ::close(nc.lock->fd());
        // In the pod's network namespace, as runc's init would be: what
        // looks at /proc/<pid>/ns/net (hooks, `container:` joins) finds it.
        if (!netns.empty())
            if (int fd = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
                (void)::setns(fd, CLONE_NEWNET);
                ::close(fd);
            }
        for (const auto& cg : st.cgroups) (void)sys::write_file(cg + "/cgroup.procs", "0");
        relay_child(sb_paths, req, spec.process->terminal, console, wr.release(), go_r.release(), tree_fds);
    }
    wr.reset();
    go_r.reset();
    trees.clear();  // the relay's to send
    st.pid = relay;
    st.pid_start = sys::proc_start_time(relay).value_or(0);
    if (auto r = write_state(paths, st); !r) return cleanup(r.error());
    // prestart and createRuntime hooks: the container exists (its pid is
    // its relay's), nothing of it is in the guest yet.
    auto hooks = [&]() -> Result<void> {
        auto hs = oci_state(st);
        hs["status"] = status::kCreating;
        if (auto h = spec.hooks.find("prestart"); h != spec.hooks.end()) TRY(run_hooks(h->second, "prestart", hs));
        if (auto h = spec.hooks.find("createRuntime"); h != spec.hooks.end()) TRY(run_hooks(h->second, "createRuntime", hs));
        return {};
    };
    if (auto r = hooks(); !r) return cleanup(r.error());
    if (auto r = proto::ReportLink(go_w.get()).send({.kind = proto::Report::Kind::Go}); !r) return cleanup(r.error());
    go_w.reset();
    if (auto r = proto::await_report(rd.get(), "relay died during create"); !r) return cleanup(r.error());
    if (!o.pid_file.empty())
        if (auto r = write_pid_file(o.pid_file, relay); !r) {
            proto::ControlRequest remove{.op = proto::Op::Remove};
            (void)shim_call(shim_route(g, st, remove), remove, 10000);
            return cleanup(r.error());
        }
    log::debug("create " + id + ": created, pid " + std::to_string(relay));
    return relay;
}

}  // namespace husk
