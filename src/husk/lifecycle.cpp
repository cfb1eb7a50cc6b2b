#include "husk/lifecycle.h"
#include "husk/vm_template.h"

#include <dirent.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <optional>

#include "husk/cgroups.h"
#include "husk/checkpoint.h"
#include "husk/config.h"
#include "husk/console.h"
#include "husk/defaults.h"
#include "husk/hooks.h"
#include "husk/hypervisor.h"
#include "husk/numbers.h"
#include "husk/pod.h"
#include "husk/preserved_fds.h"
#include "husk/sandbox.h"
#include "hypervisors/virtiofsd.h"
#include "husk/shim_client.h"
#include "husk/signals.h"
#include "husk/spec.h"
#include "husk/system_image.h"
#include "protocol/creator.h"
#include "sys/netlink.h"
#include "sys/sys.h"

namespace husk {

void NewContainer::undo() {
    remove_host_cgroups(st.cgroups);
    (void)sys::remove_all(paths.dir);
}

Result<NewContainer> begin_container(const Globals& g, const std::string& id, const std::string& bundle, const Spec& spec) {
    NewContainer nc;
    nc.paths = state_paths(g.root, id);
    // mkdir is the duplicate-id check.
    if (::mkdir(nc.paths.dir.c_str(), 0700) < 0) {
        if (errno == EEXIST) return fail("container with id exists: " + id, EEXIST);
        return fail_errno("mkdir " + nc.paths.dir);
    }
    auto lock = ContainerLock::acquire_new(nc.paths);
    if (!lock) {
        nc.undo();
        return tl::unexpected(lock.error());
    }
    nc.lock.emplace(std::move(*lock));
    nc.st = new_state(id, bundle, spec);
    auto dirs = host_cgroups(g, spec, id);
    if (!dirs) {
        nc.undo();
        return tl::unexpected(dirs.error());
    }
    nc.st.cgroups = *dirs;
    return nc;
}

State new_state(const std::string& id, const std::string& bundle, const Spec& spec) {
    State st;
    st.id = id;
    st.bundle = bundle;
    st.rootfs = rootfs_path(bundle, spec);
    st.status = status::kCreating;
    st.created = now_rfc3339();
    st.owner = owner_name();
    st.annotations = spec.annotations;
    st.hooks = spec.raw.contains("hooks") ? spec.raw["hooks"] : nlohmann::json();
    return st;
}

std::string owner_name() {
    if (auto* pw = getpwuid(getuid())) return pw->pw_name;
    return std::to_string(getuid());
}

Result<std::string> absolute(const std::string& p) {
    if (!p.empty() && p[0] == '/') return p;
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return fail_errno("getcwd");
    return std::string(cwd) + "/" + p;
}

Result<void> write_pid_file(const std::string& path, pid_t pid) {
    auto abs = TRY_CTX(absolute(path), "write pid file");
    TRY_CTX(sys::write_file_atomic(abs, std::to_string(pid), 0644), "write pid file");
    return {};
}

// A cpuset names host CPUs: the VMM is pinned to them. One the host does
// not have fails here, as runc's write to cpuset.cpus would.
Result<void> check_host_cpus(const std::string& list) {
    auto want = TRY(parse_cpu_list(list));
    auto online = sys::read_file("/sys/devices/system/cpu/online").value_or("");
    while (!online.empty() && std::isspace(static_cast<unsigned char>(online.back()))) online.pop_back();
    auto have = parse_cpu_list(online);
    if (!have) return {};  // cannot tell: the shim's pinning will say
    for (unsigned c : want)
        if (std::find(have->begin(), have->end(), c) == have->end())
            return fail("\"" + list + "\": this host has no CPU " + std::to_string(c) + " (its CPUs: " + online + ")", EINVAL);
    return {};
}

// Kill whatever a container left running: shim first (the VMM dies with
// it through PDEATHSIG), then the VMM by pid if it somehow survived.
static void reap_leftovers(const State& s) {
    if (sys::process_alive(s.pid, s.pid_start) && s.pid != getpid()) {
        ::kill(s.pid, SIGKILL);
        sys::wait_process_exit(s.pid, s.pid_start, std::chrono::milliseconds(defaults::kStopTimeoutMs));
    }
    if (sys::process_alive(s.vmm_pid, s.vmm_start)) {
        ::kill(s.vmm_pid, SIGKILL);
        sys::wait_process_exit(s.vmm_pid, s.vmm_start, std::chrono::milliseconds(defaults::kStopTimeoutMs));
    }
    // A shim that was killed left its tc redirects on the caller's links,
    // and the taps a VMM that opens by name needed.
    if (!s.net_links.empty()) {
        pid_t child = ::fork();
        if (child == 0) {
            int fd = ::open(s.netns.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd >= 0 && ::setns(fd, CLONE_NEWNET) == 0) {
                sys::remove_redirects(s.net_links);
                sys::delete_taps(s.net_taps);
            }
            _exit(0);
        }
        if (child > 0)
            while (::waitpid(child, nullptr, 0) < 0 && errno == EINTR) {
            }
    }
}

// The shim's next word on its sync link (protocol/creator.h) that is not
// progress: hooks, ok or error (nullopt: it died first). Progress names
// a long step the caller waits on (a template's first boot): passed on as
// log::progress.
static Result<std::optional<proto::Report>> read_shim_report(proto::ReportLink& link) {
    for (;;) {
        auto m = TRY(link.next());
        if (!m || m->kind != proto::Report::Kind::Progress) return m;
        log::progress(m->text);
    }
}

// Spawn husk-shim with the caller's stdio; `sync_w` becomes its fd 3.
static Result<pid_t> spawn_shim(const Globals& g, const std::string& id, const std::string& bundle,
                                const CreateOptions& o, int sync_w, const std::vector<std::string>& cgroups,
                                bool hooks, const std::string& hypervisor) {
    // The preserved fds keep their numbers (3..); the sync socket comes after them.
    int sync_fd = kFirstPreservedFd + o.preserve_fds;
    std::vector<std::string> argv = {find_shim_binary(), "--root", g.root, "--id", id, "--bundle", bundle,
                                     "--sync-fd", std::to_string(sync_fd), "--hypervisor", hypervisor};
    if (o.preserve_fds) argv.insert(argv.end(), {"--preserve-fds", std::to_string(o.preserve_fds)});
    if (hooks) argv.push_back("--wait-hooks");
    if (!o.restore_from.empty()) argv.insert(argv.end(), {"--restore", o.restore_from});
    if (!o.console_socket.empty()) argv.insert(argv.end(), {"--console-socket", TRY(absolute(o.console_socket))});
    if (!g.log.path.empty()) argv.insert(argv.end(), {"--log", g.log.path});
    if (g.log.format == log::Format::Json) argv.insert(argv.end(), {"--log-format", "json"});
    if (g.log.debug) argv.push_back("--debug");
    for (const auto& a : g.annotations) argv.insert(argv.end(), {"--annotation", a});
    sys::SpawnOptions so;
    so.fds = {{sync_w, sync_fd}};
    for (int fd : preserved_fds(o.preserve_fds)) so.fds.push_back({fd, fd});
    so.cgroups = cgroups;  // the VMM inherits them from the shim
    return sys::spawn(argv, so);
}

// cgroupsPath on the host: created here, joined by the shim before it
// starts the VMM. Root must get them; a rootless caller without a
// delegated hierarchy runs without, as rootless runc does.
Result<std::vector<std::string>> host_cgroups(const Globals& g, const Spec& spec, const std::string& id) {
    // No cgroupsPath: runc still gives the container a group named after
    // it, under its own cgroup (systemd: system.slice/runc-<id>.scope), so
    // that host accounting sees the VM.
    std::string path = spec.cgroups_path;
    bool implicit = path.empty();
    if (implicit) path = g.systemd_cgroup ? "system.slice:husk:" + id : id;
    if (g.systemd_cgroup && (path[0] == '/' || std::count(path.begin(), path.end(), ':') != 2))
        return fail("config.json: linux.cgroupsPath: with --systemd-cgroup it must be slice:prefix:name, got \"" +
                        path + "\"", EINVAL);
    auto dirs = host_cgroup_dirs(path, sys::read_file("/proc/self/mountinfo").value_or(""),
                                 sys::read_file("/proc/self/cgroup").value_or(""));
    if (dirs) {
        auto made = make_host_cgroups(*dirs);
        if (made) return dirs;
        remove_host_cgroups(*dirs);
        dirs = tl::unexpected(made.error());
    }
    if (!rootless()) return tl::unexpected(dirs.error().context(implicit ? "host cgroup" : "config.json: linux.cgroupsPath"));
    // Rootless runc, too, runs without one where it may not make it.
    if (implicit) log::debug("host cgroup " + path + ": " + dirs.error().message + "; running without one (rootless)");
    else log::warn("linux.cgroupsPath: " + dirs.error().message + "; running without a host cgroup (rootless)");
    return std::vector<std::string>{};
}

// The VM's bounds on the host (host_cgroup_limits). Rootless callers
// without delegation cannot set them, as rootless runc cannot: a warning.
Result<void> apply_host_limits(const nlohmann::json& resources, std::optional<uint64_t> vm_bound,
                               const std::vector<std::string>& dirs) {
    auto writes = host_cgroup_limits(resources.is_object() ? resources : nlohmann::json::object(), vm_bound, dirs,
                                     [](const std::string& p) { return sys::exists(p); });
    auto r = write_host_cgroup_limits(writes);
    if (!r && !rootless()) return r;
    if (!r) log::warn(r.error().message + "; the host does not bound this VM (rootless)");
    return {};
}

Result<DriverChoice> container_hypervisor(const Globals& g, const Spec* spec) {
    std::string global = g.hypervisor, origin = "--hypervisor";
    if (global.empty()) global = TRY(load_config()).hypervisor, origin = config_path();
    static const std::map<std::string, std::string> none;
    return choose_driver(spec ? spec->annotations : none, global, origin, spec);
}

HostShare share_on_this_host(const Hypervisor& hv) {
    auto config = load_config();
    return host_share(share_support(hv.capabilities(), !find_virtiofsd().empty(), rootless()), hv.name(),
                      config ? config->share : "");
}

HostChannel channel_on_this_host(const Hypervisor& hv) {
    auto caps = hv.capabilities();
    HostChannel c;
    c.name = channel_name(caps.vsock_backend, caps.hybrid_vsock, caps.vsock, hv.name());
    c.vsock = caps.vsock_backend || caps.hybrid_vsock || caps.vsock;
    // (In channel_name's order, so that the reason is the name's.)
    c.why = caps.vsock_backend
                ? "no /dev/vhost-vsock: husk-vsock serves the vsock device of a VM booted on its own, and of a template's "
                  "clone (plugged in once restored); the VM that boots to make a template, one that may be checkpointed "
                  "(its rootfs on a disk) and a 9p template's clone keep virtio-serial, since QEMU 7.2 cannot save a "
                  "vhost-user-vsock device (and it needs the guest's memory shared)"
            : caps.hybrid_vsock  ? "the VMM's own vsock device, reached through its unix socket"
            : caps.vsock         ? "/dev/vhost-vsock: the kernel serves the guest's vsock device"
            : hv.name() == "uml" ? "UML has no vsock device: a line of its console (a host pty)"
                                 : "no /dev/vhost-vsock and no husk-vsock (build it, or set HUSK_VSOCK)";
    return c;
}

Result<pid_t> create_container(const Globals& g, const std::string& id, const CreateOptions& o) {
    TRY(validate_id(id));
    std::string bundle = TRY_CTX(sys::realpath(o.bundle.empty() ? "." : o.bundle), "bundle");
    Spec spec = TRY(load_spec(bundle));
    add_annotations(spec, TRY(parse_annotation_args(g.annotations)));
    if (!spec.process) return fail("config.json: process: required to create a container", EINVAL);
    if (spec.process->terminal && o.console_socket.empty())
        return fail("config.json: process.terminal is true but no --console-socket was given", EINVAL);
    TRY(preserved_fd_flows(o.preserve_fds));  // the shim (or a pod member's relay) takes them
    TRY(guest_cgroup_files(spec.resources.is_object() ? spec.resources : nlohmann::json::object(), "linux.resources"));
    TRY_CTX(check_host_cpus(spec.cpuset_cpus), "config.json: linux.resources.cpu.cpus");
    TRY(check_share_annotation(spec));
    TRY(boot_timeout_ms(spec));
    TRY(templates::choose(spec.annotations, std::nullopt));  // a bad org.husk.template or HUSK_TEMPLATES
    std::string rootfs = rootfs_path(bundle, spec);
    if (!sys::is_dir(rootfs)) return fail("rootfs " + rootfs + " does not exist", ENOENT);
    auto image_kernel = TRY(system_image::requested(spec));
    TRY(system_image::console_stdio(spec));
    if (auto pod = TRY(resolve_pod(spec, TRY(pod_peers(g)), namespace_identity))) {
        if (image_kernel)
            return fail(std::string("annotation ") + system_image::kAnnotationKernel +
                            ": a container that joins a pod's VM cannot boot a kernel of its own",
                        EINVAL);
        return create_member(g, id, bundle, spec, *pod, o);
    }
    auto driver = TRY(container_hypervisor(g, &spec));
    if (!o.restore_from.empty() && driver.automatic)
        if (auto image = checkpoint::read_image(o.restore_from)) driver = driver_for_restore(driver, image->hypervisor);
    const std::string& hypervisor = driver.name;
    auto hv = make_hypervisor(hypervisor);
    if (auto why = hv->unavailable(); !why.empty())
        return fail("hypervisor " + hypervisor + ": " + why, ENOENT);
    // QEMU's accelerator is decided once per host boot by a real guest boot
    // (detect_accel_info): here, where the caller's terminal can be told
    // (log::progress), rather than in the shim, whose stderr is the
    // container's. The shim reads the verdict back from its cache.
    if (hypervisor == "qemu") (void)detect_accel_info();
    if (image_kernel) {
        // Checked here, before anything starts, and again by the shim as it
        // copies what it checked.
        auto checked = TRY(system_image::check(rootfs, *image_kernel, find_guest_initrd()));
        auto caps = hv->capabilities();
        if (checked.kernel.elf ? !caps.elf_kernel : !caps.bzimage)
            return fail(std::string("annotation ") + system_image::kAnnotationKernel + ": hypervisor " + hypervisor +
                            (checked.kernel.elf ? " cannot boot an image's kernel (an ELF vmlinux): QEMU, Firecracker and "
                                                  "Cloud Hypervisor can"
                                                : " cannot boot an image's kernel (a bzImage): QEMU can"),
                        EINVAL);
        TRY(system_image::poweroff_signal(spec, rootfs));
        log::debug("create " + id + ": the image's kernel " + image_kernel->kernel + ": " + checked.why);
    }

    log::debug("create " + id + ": bundle " + bundle + ", hypervisor " + hypervisor + ": " + driver.why);
    TRY(sys::mkdir_p(g.root, 0711));
    auto nc = TRY(begin_container(g, id, bundle, spec));
    auto& paths = nc.paths;
    auto& st = nc.st;
    // From here on a failure removes the directory (and cgroups) again.
    auto cleanup = [&](Error e) -> Result<pid_t> {
        nc.undo();
        return tl::unexpected(std::move(e));
    };
    // The VM's memory bound and cpuset from the start; its CPU time bound
    // once it has booted (below): the boot is the runtime's cost, and under
    // half a CPU a TCG boot took twice as long (5.3 s against 2.7 s).
    nlohmann::json boot_res = spec.resources.is_object() ? spec.resources : nlohmann::json::object();
    nlohmann::json run_res = nlohmann::json::object();
    if (boot_res.contains("cpu") && boot_res["cpu"].is_object()) {
        for (const char* k : {"shares", "quota", "period"})
            if (boot_res["cpu"].contains(k)) run_res["cpu"][k] = boot_res["cpu"][k];
        for (const char* k : {"shares", "quota", "period"}) boot_res["cpu"].erase(k);
    }
    if (auto r = apply_host_limits(boot_res, (vm_memory_mib(spec) + defaults::kVmmMemoryMiB) << 20, st.cgroups); !r)
        return cleanup(r.error());
    st.pid = getpid();  // until the shim takes over
    st.pid_start = sys::proc_start_time(getpid()).value_or(0);
    if (auto r = write_state(paths, st); !r) return cleanup(r.error());

    auto pair = sys::socketpair(SOCK_STREAM);
    if (!pair) return cleanup(pair.error());
    auto [sync, sync_shim] = std::move(*pair);
    bool hooks = spec.hooks.count("prestart") || spec.hooks.count("createRuntime");
    auto pid = spawn_shim(g, id, bundle, o, sync_shim.get(), st.cgroups, hooks, hypervisor);
    if (!pid) return cleanup(pid.error().context("start shim"));
    log::debug("create " + id + ": shim " + std::to_string(*pid) + " started");
    sync_shim.reset();
    proto::ReportLink link(sync.get());
    using Kind = proto::Report::Kind;
    auto reply = read_shim_report(link);
    Result<void> ok = {};
    if (hooks && reply && *reply && (*reply)->kind == Kind::Hooks) {
        // The shim is in the container's namespaces, its VM not started:
        // the runtime's create hooks run now, so that the network they set
        // up (docker's libnetwork) is there for the VM's NICs.
        auto now = read_state(paths);
        if (!now) ok = tl::unexpected(now.error());
        else {
            auto hs = oci_state(*now);
            hs["status"] = status::kCreating;
            ok = run_hooks(spec.hooks["prestart"], "prestart", hs);
            if (ok) ok = run_hooks(spec.hooks["createRuntime"], "createRuntime", hs);
        }
        if (ok) ok = link.send({.kind = Kind::Go});
        if (ok) ::shutdown(sync.get(), SHUT_WR);
        if (ok) reply = read_shim_report(link);
    }
    if (ok && reply && *reply && (*reply)->kind == Kind::Ok) {
        // The VM is up and the container built, its process parked: the
        // pid file says "created".
        ok = apply_host_limits(run_res, std::nullopt, st.cgroups);
        if (ok && !o.pid_file.empty()) ok = write_pid_file(o.pid_file, *pid);
        if (ok) log::debug("create " + id + ": created, pid " + std::to_string(*pid));
        if (ok) return *pid;
    }
    if (!ok) {
        ::kill(*pid, SIGKILL);
        ::waitpid(*pid, nullptr, 0);
        if (auto s = read_state(paths)) reap_leftovers(*s);
        return cleanup(ok.error());
    }
    // The shim failed (or said what it should not): it has stopped its VM,
    // or is killed now; make sure, then clean up.
    bool told = reply && *reply && (*reply)->kind == Kind::Error;
    if (!told) ::kill(*pid, SIGKILL);
    int wst = 0;
    ::waitpid(*pid, &wst, 0);
    if (auto s = read_state(paths)) reap_leftovers(*s);
    if (told) return cleanup(Error{(*reply)->code ? (*reply)->code : EIO, (*reply)->text});
    if (!reply) return cleanup(reply.error().context("shim"));
    if (*reply) return cleanup(Error{EPROTO, "shim: unexpected report during create"});
    return cleanup(Error{EIO, "shim died during create (" +
                                  (WIFSIGNALED(wst) ? "signal " + std::to_string(WTERMSIG(wst))
                                                    : "status " + std::to_string(WEXITSTATUS(wst))) +
                                  ")"});
}

Result<State> load_state(const Globals& g, const std::string& id) {
    TRY(validate_id(id));
    auto s = read_state(state_paths(g.root, id));
    if (!s && s.error().code == ENOENT) return fail("container does not exist", ENOENT);
    return s;
}

Result<void> delete_container(const Globals& g, const std::string& id, bool force) {
    TRY(validate_id(id));
    auto paths = state_paths(g.root, id);
    auto locked = ContainerLock::acquire(paths);
    // runc: `delete --force` of a container that does not exist succeeds
    // (clients' cleanup paths rely on it).
    if (!locked && locked.error().code == ENOENT && force) return {};
    auto lock = TRY(std::move(locked));
    log::debug("delete " + id + (force ? " (forced)" : ""));
    auto st = read_state(paths);
    if (st) {
        std::string s = effective_status(*st);
        if ((s == status::kRunning || s == status::kPaused) && !force)
            return fail("cannot delete container " + id + " that is not stopped: " + s, EBUSY);
        if (s != status::kStopped) {
            // created (runc kills it), or forced: SIGKILL through the shim,
            // then make sure nothing is left.
            proto::ControlRequest req{.op = proto::Op::Kill, .signal = SIGKILL, .all = true};
            (void)shim_call(shim_route(g, *st, req), req, 5000);
            sys::wait_process_exit(st->pid, st->pid_start, std::chrono::milliseconds(defaults::kStopTimeoutMs));
        }
        reap_leftovers(*st);
        if (!st->sandbox.empty()) {
            // A pod member: its share, cgroup and processes in the guest go
            // (the sandbox may be gone already: nothing then to free).
            proto::ControlRequest req{.op = proto::Op::Remove};
            (void)shim_call(shim_route(g, *st, req), req, 10000);
        }
        if (auto n = kill_host_cgroup_procs(st->cgroups, std::chrono::seconds(1), std::chrono::milliseconds(defaults::kStopTimeoutMs)))
            log::debug("delete " + id + ": killed " + std::to_string(n) + " processes left in its host cgroup");
        remove_host_cgroups(st->cgroups);
    } else if (st.error().code != ENOENT && !force) {
        return fail("read state: " + st.error().message + " (use --force to remove)", st.error().code);
    }
    TRY_CTX(sys::remove_all(paths.dir), "remove state");
    if (st)
        if (auto hooks = parse_hooks(st->hooks); hooks && hooks->count("poststop")) {
            auto hs = oci_state(*st);
            hs["status"] = status::kStopped;
            for (const auto& w : run_all_hooks((*hooks)["poststop"], "poststop", hs)) log::warn(w);
        }
    return {};
}

Result<std::vector<State>> list_containers(const Globals& g) {
    std::vector<State> out;
    auto ids = sys::list_dir(g.root);
    if (!ids) {
        if (ids.error().code == ENOENT) return out;
        return tl::unexpected(ids.error());
    }
    for (auto& id : *ids)
        if (id[0] != '.')
            if (auto s = read_state(state_paths(g.root, id))) out.push_back(*s);
    return out;
}

}  // namespace husk
