// The shim's VM: its launch (booted, from a template, or from a
// checkpoint), the boot deadline, console, reaping, pause, memory and vCPU
// pinning (shim.h).
#include "shim/shim.h"

namespace husk::shimd {

// Not here but once the create request is written (the loop): the page-out
// costs ~15 ms of syscalls, which the agent's building the container hides.
// (A restored template is past restoring: what fails from now on is the
// container's, not the template's.)
void Shim::booted() {
    timeline_.mark("agent up");
    boot_images_held_ = true;
    restoring_ = false;
    taps_.clear();
}

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
proto::Create Shim::create_params() {
    proto::Create p = agent_create_params(spec_, plan_, cgroup_);
    p.container = args_.id;
    p.process_index = 0;
    p.process.extra_fds = init_extra_fds_;
    if (!nics_.empty()) p.network = nics_;
    p.hooks = guest_hooks(spec_.hooks);
    if (!p.hooks.empty()) {
        p.hook_state = oci_state(state_);
        (*p.hook_state)["status"] = status::kCreating;
    }
    return p;
}

Result<void> Shim::launch_vm() {
    auto caps = hv_->capabilities();
    HostFacts& host = host_;
    host.accel = caps.kvm ? Accel::Kvm : Accel::Tcg;
    host.vsock = caps.vsock && !caps.hybrid_vsock;
    host.hybrid_vsock = caps.hybrid_vsock;
    if (caps.stdin_window) {
        ses_.stdin_window = caps.stdin_window;
        for (auto& [fd, in] : ses_.procs[0].in) in.credit = proto::SendCredit(caps.stdin_window);
    }
    if (caps.channel_window) ses_.channel = proto::SendCredit(caps.channel_window);
    host.host_cpus = unsigned(sysconf(_SC_NPROCESSORS_ONLN));
    if (caps.max_vcpus) host.host_cpus = std::min(host.host_cpus, caps.max_vcpus);
    host.kernel = hv_->guest_kernel();
    host.initrd = find_guest_initrd();
    host.debug = args_.log.debug;
    if (caps.memory_hotplug) host.hotplug_mib = defaults::kHotplugMaxMiB;
    host.cpu_hotplug = caps.cpu_hotplug;
    for (auto& f : {host.kernel, host.initrd})
        if (!sys::exists(f)) return fail("guest image " + f + " not found (build rootfs-builder or set HUSK_KERNEL/HUSK_INITRD)", ENOENT);
    // An image that carries its own kernel boots it (system_image.h):
    // copied here from the rootfs, with husk's initramfs (and the image's
    // modules, where husk's are for another release).
    if (auto k = TRY(system_image::requested(spec_))) {
        std::string rootfs = rootfs_path(args_.bundle, spec_);
        poweroff_signal_ = TRY(system_image::poweroff_signal(spec_, rootfs));
        auto boot = TRY(system_image::prepare_boot(rootfs, *k, host.initrd, paths_.dir));
        host.kernel = boot.kernel;
        host.initrd = boot.initrd;
        image_kernel_ = k->kernel;
        log::debug("the image's kernel " + k->kernel + ": " + boot.why + "; SIGTERM goes to its init as " +
                   (poweroff_signal_ ? signal_name(*poweroff_signal_) : std::string("SIGTERM")));
    }
    auto can = share_support(caps, !find_virtiofsd().empty(), rootless());
    auto config = TRY(load_config());
    if (!args_.restore.empty()) {
        TRY(prepare_restore(host));  // the rootfs disk is the checkpoint's
    } else if (TRY(rootfs_on_disk(spec_, hv_->name(), can.any()))) {
        share_disk_ = true;
        host.share_disk = paths_.dir + "/share.img";
        TRY_CTX(make_share_image(paths_.shared, host.share_disk), "rootfs disk");
    } else if (caps.shares) {
        auto choice = TRY(choose_share_fs(spec_, config.share, can));
        host.share_fs = choice.fs;
        share_why_ = choice.why;
    }
    // A template (vm_template.h) holds no container's devices: they are
    // added after the restore (the virtio-fs share, NICs up to the ports
    // it has, the rootfs disk in place of a placeholder), or held with
    // names and MACs of the template's own (Firecracker's NICs). A VM
    // that needs one that cannot be (a disk elsewhere, more NICs, a
    // vhost-vsock device) boots on its own. (A hybrid vsock is the VMM's
    // own, in every clone the same: its guest end re-accepts after a
    // restore.)
    auto use = TRY(templates::choose(spec_.annotations, config.templates));
    template_why_ = !args_.restore.empty()                 ? "restoring a checkpoint"
                    : !use.on                              ? use.why
                    : !image_kernel_.empty()               ? "the image boots its own kernel (org.husk.kernel)"
                    : !caps.templates                      ? "the driver has none"
                    : !host.share_disk.empty() && !caps.template_disks ? "the rootfs is on a disk"
                    : nics_.size() > caps.template_nics    ? "the container has more NICs than a template can be given"
                    : host.vsock                           ? "the channel is vsock"
                    : !caps.shares && host.share_disk.empty() ? "nothing is shared"
                                                              : "";
    // husk-vsock's device where the kernel has no vhost-vsock, unless the
    // VM is to be saved: QEMU 7.2 cannot migrate a vhost-user-vsock
    // device, so a template and a checkpointable VM (its rootfs on a disk)
    // keep virtio-serial. (A template's clone is given the device once
    // restored: start_vmm.)
    if (caps.vsock_backend) {
        channel_why_ = !template_why_.empty() ? "" : "a template cannot hold husk-vsock's device (QEMU cannot save it)";
        if (channel_why_.empty() && !host.share_disk.empty())
            channel_why_ = "the rootfs is on a disk, for a checkpoint, and QEMU cannot save husk-vsock's device";
        host.hybrid_vsock = host.vsock_backend = channel_why_.empty();
    }
    // Every socket of the VMM's is in vmm/, its jail's working directory
    // (the VMM sees them by name: sun_path's 108 bytes whatever --root is).
    if (::mkdir(paths_.vmm_dir.c_str(), 0700) < 0 && errno != EEXIST) return fail_errno("mkdir " + paths_.vmm_dir);
    VmConfig cfg = make_vm_config(spec_, host, sandbox_paths(), nics_, tap_names_);
    vcpus_ = cfg.vcpus;
    max_vcpus_ = cfg.all_vcpus();
    vcpu_wants_ = vcpu_wants(spec_);
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
    boot_timeout_ms_ = TRY(boot_timeout_ms(spec_));
    TRY(start_vmm(template_why_.empty()));
    shim_listen_ = TRY(sys::unix_listen(paths_.shim_sock, 64));
    return {};
}

SandboxPaths Shim::sandbox_paths() const {
    return SandboxPaths{paths_.shared, paths_.agent_sock, paths_.qmp_sock, paths_.vsock_sock, paths_.virtiofs_sock,
                        paths_.vsock_vhost_sock};
}

// The VMM, booting (as a template, to make one, when `templates` and
// none is saved) or restoring this shape's template.
Result<void> Shim::start_vmm(bool templates) {
    auto caps = hv_->capabilities();
    HostFacts host = host_;
    host.template_shape = templates;
    VmConfig cfg = make_vm_config(spec_, host, sandbox_paths(), nics_, tap_names_);
    sys::Fd saved;
    if (templates) {
        template_shape_ = hv_->template_shape(cfg);
        if (template_shape_.empty()) {
            template_why_ = "the driver cannot make one of this VM";
            host.template_shape = false;
            cfg = make_vm_config(spec_, host, sandbox_paths(), nics_, tap_names_);
        } else {
            template_dir_ = templates::dir();
            template_key_ = templates::key_of(template_shape_);
            long hashed_ms = -1;
            auto found = templates::open_saved(template_dir_, template_shape_, &hashed_ms);
            if (!found) log::warn("template " + template_key_ + ": " + found.error().message + "; booting to make it again");
            else if (*found && hashed_ms >= 0)
                log::debug("template: " + template_key_ + " hashed again and as sealed (" + std::to_string(hashed_ms) + " ms)");
            if (found && *found) {
                saved = std::move(**found);
                cfg.incoming_fd = saved.get();
                restoring_ = true;
            } else {
                making_template_ = true;
            }
        }
    }
    // What a checkpoint of it loads into: a VM made from the same bundle
    // (a template's clone's too: a VMM that holds its devices from the
    // boot, Firecracker, records the container's in its snapshot).
    if (host.template_shape) {
        HostFacts plain = host;
        plain.template_shape = false;
        vm_shape_ = hv_->vm_shape(make_vm_config(spec_, plain, sandbox_paths(), nics_, tap_names_));
    } else {
        vm_shape_ = hv_->vm_shape(cfg);
    }
    if (!args_.restore.empty()) {
        // The checkpoint loads into a VM like the one it was saved from.
        if (vm_shape_.empty() || vm_shape_ != restore_info_.vm_shape)
            return fail("checkpoint image " + args_.restore + ": its VM differs from this container's: " +
                            checkpoint::first_difference(restore_info_.vm_shape, vm_shape_),
                        EINVAL);
        checkpoint_state_ = TRY(sys::open(args_.restore + "/" + checkpoint::kStateFile, O_RDONLY | O_CLOEXEC));
        cfg.incoming_fd = checkpoint_state_.get();
        resuming_ = true;
    }
    // A template's clone gets husk-vsock's device once it is restored, as
    // it gets its virtio-fs share (whose shared memory the device needs
    // too): its agent's channel is then vsock, as a booted VM's is. The
    // VM that boots to be saved keeps virtio-serial.
    if (templates && host.template_shape && caps.vsock_backend) {
        bool shared = host.share_fs == ShareFs::VirtioFs && host.share_disk.empty();
        plug_vsock_ = restoring_ && shared;
        channel_why_ = plug_vsock_ ? ""
                       : !shared   ? "a template cannot hold husk-vsock's device (QEMU cannot save it), and without "
                                     "a virtio-fs share its memory is not shared for the device to be plugged in later"
                                   : "this VM boots to be saved as a template, and QEMU cannot save husk-vsock's device: "
                                     "the template's clones are given it once restored";
    }
    if (plug_vsock_) {
        cfg.channel.vhost_socket = paths_.vsock_vhost_sock;
        cfg.channel.plugged_uds = paths_.vsock_sock;
        cfg.channel.vsock_cid = 3;  // husk-vsock's guest: any CID will do
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
        // (A clone that is given vsock starts on the template's
        // virtio-serial: QEMU connects its port here, and it stays idle.)
        agent_listen_ = TRY(sys::unix_listen(paths_.agent_sock, 1));
        if (plug_vsock_) hybrid_vsock_ = paths_.vsock_sock;
    }
    if (caps.control_socket) qmp_listen_ = TRY(sys::unix_listen(paths_.qmp_sock, 1));
    qmp_attached_ = !caps.control_socket;  // nothing to wait for
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
    std::string channel = plug_vsock_ ? "vsock (husk-vsock, plugged in once restored; virtio-serial until then)"
                                      : channel_name(host.vsock_backend, host.hybrid_vsock, host.vsock, hv_->name());
    log::debug("vm: " + (hv_->name() == "qemu" ? std::string(accel_name(host.accel)) : hv_->name()) + ", " +
               std::to_string(cfg.vcpus) + " vcpu, " + std::to_string(cfg.memory_mib) + " MiB, channel " + channel +
               (channel_why_.empty() ? "" : " (" + channel_why_ + ")") +
               (host.share_disk.empty() ? "" : ", rootfs on a disk") + " (sized by " + vm_size_reason(spec_) + ")");
    if (!share_why_.empty())
        log::debug(std::string("share: ") + (host.share_fs == ShareFs::VirtioFs ? "virtio-fs" : hv_->name() == "uml" ? "hostfs" : "9p") +
                   " (" + share_why_ + ")");
    if (resuming_) log::debug("checkpoint: loading " + args_.restore);
    else if (restoring_) log::debug("template: restoring " + template_key_ + " (" + template_dir_ + ")");
    else if (making_template_) {
        log::debug("template: none of this shape yet: booting to save " + template_key_);
        // The caller's terminal hears of it (husk create passes it on).
        if (!args_.log.debug && args_.sync_fd >= 0)
            (void)proto::ReportLink(args_.sync_fd)
                .send({.kind = proto::Report::Kind::Progress,
                       .text = "the first container of its VM shape: booting a VM to save as a template (once; the "
                               "next ones start from it)"});
    }
    else log::debug("template: none (" + template_why_ + ")");
    launched_at_ = Clock::now();
    timeline_.mark("VMM launched");
    auto launched = hv_->launch(cfg, paths_.dir, paths_.vmm_log);
    // A REST-API VMM restores inside launch: one that refused the
    // template is dropped like any other (and the VM boots instead).
    if (!launched && restoring_) {
        restore_failed(launched.error().message);
        return {};
    }
    vm_ = TRY(std::move(launched));
    log::debug("vm: the VMM runs, " + std::to_string(ms_since(launched_at_)) + " ms after its launch began");
    timeline_.mark("VMM up");
    console_w_.reset();
    // The VMM's now: a tap lives as long as the VMM does. (A template's
    // VMM has them from its attach: until then, ours, for a VM booted
    // instead of a template that did not restore.)
    if (!templates) taps_.clear();
    state_.vmm_pid = vm_->pid();
    state_.vmm_start = sys::proc_start_time(vm_->pid()).value_or(0);
    TRY(write_state(paths_, state_));
    // A restore that has not reached its agent by then is given up on
    // (and the container's VM booted instead) long before a boot would be.
    int timeout_ms = restoring_ || resuming_ ? std::min(boot_timeout_ms_, defaults::kTemplateRestoreTimeoutMs) : boot_timeout_ms_;
    boot_deadline_ = Clock::now() + std::chrono::milliseconds(timeout_ms);
    return {};
}

// ---------------------------------------------------------------- events

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

// Boot failed because of `why`. A channel that breaks during boot usually
// means the VM is dying: give it a second and, if so, say that instead.
void Shim::boot_failed(const std::string& why) {
    for (int i = 0; vm_ && i < 100; ++i) {
        reap_vm();
        if (!vm_died_) ::usleep(10000);
    }
    std::string what = vm_died_ ? "vm exited before the agent answered" : why;
    if (resuming_) what = "checkpoint image " + args_.restore + " did not load: " + (vm_died_ ? "the VMM exited" : why);
    abort_create(Error{EIO, boot_failure(what)});
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
    // (Unquiet under --debug: the kernel's first line is its console's;
    // a restored VM's kernel was up before it was saved.)
    if (!restoring_ && !resuming_ && !timeline_.has("agent up") && !timeline_.has("template restored"))
        timeline_.mark("kernel console up");
    // Serial output arrives a few bytes at a time: log whole lines.
    for (ssize_t i = 0; i < n; ++i) {
        char c = buf[i];
        if (c == '\n' || console_line_.size() >= 4096) {
            log::debug("console: " + console_line_);
            timeline_.console_line(console_line_);
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

}  // namespace husk::shimd
