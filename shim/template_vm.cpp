// A VM from a template (shim.h): what the restored guest is given to be
// this container's (its share, NICs, entropy, clock), the save of a new
// template once its agent waits, and a template that does not restore
// (dropped; the VM boots instead).
#include "shim/shim.h"

namespace husk::shimd {

// What the template's guest needs to be this container's VM: the share
// (virtio-fs, which a template cannot hold, plugged in now), and the
// attach request's parameters.
Result<proto::Attach> Shim::attach_template() {
    proto::Attach a;
    if (share_disk_) TRY_CTX(vm_->add_disk(0), "give the VM its rootfs disk");
    else if (host_.share_fs == ShareFs::VirtioFs) TRY_CTX(vm_->add_share(0), "add the virtio-fs share");
    bool held = hv_->capabilities().template_holds_nics;
    for (size_t i = 0; i < nics_.size(); ++i) {
        if (held) a.macs.emplace_back(templates::mac(i), nics_[i].mac);
        else TRY_CTX(vm_->add_nic(i), "add NIC " + std::to_string(i));
    }
    a.share = share_disk_ ? "disk" : host_.share_fs == ShareFs::VirtioFs ? "virtiofs" : "9p";
    a.debug = args_.log.debug;
    a.entropy.resize(64);
    if (::getrandom(a.entropy.data(), a.entropy.size(), 0) != ssize_t(a.entropy.size())) return fail_errno("getrandom");
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    a.realtime_ns = uint64_t(ts.tv_sec) * 1000000000ull + uint64_t(ts.tv_nsec);
    a.vcpus = vcpus_;
    return a;
}

// The template's guest said HELLO: we booted it to make the template, so
// save it now, before anything of the container's is in it.
Result<proto::Attach> Shim::template_hello() {
    if (!making_template_ && !(restoring_ && !template_shape_.empty()))
        return fail("the agent booted as a template unasked", EPROTO);
    if (restoring_) return fail("a restored template said HELLO again", EPROTO);
    making_template_ = false;
    auto t0 = Clock::now();
    auto saved = [&]() -> Result<bool> {
        auto fd = TRY(templates::begin_save(template_dir_));
        TRY(vm_->save_template(fd.get()));
        return templates::publish(template_dir_, template_shape_, fd.get(), defaults::kTemplateCacheMiB << 20);
    }();
    auto ms = ms_since(t0);
    if (!saved) {
        // The container does not need the template: it boots on (a save
        // runs the guest on whatever happened: Vm::save_template).
        log::warn("template " + template_key_ + " not saved: " + saved.error().message);
    } else {
        log::debug("template: " + template_key_ + (*saved ? " saved" : " saved by another container first") + " in " +
                   std::to_string(ms) + " ms");
    }
    return attach_template();
}

// A restored template's channel and control socket are both up: plug in
// the share and attach the guest.
void Shim::attach_restored() {
    if (!(restoring_ || resuming_) || attached_ || !qmp_attached_) return;
    if (plug_vsock_) return attach_restored_vsock();
    if (!chan_) return;
    attached_ = true;
    if (resuming_) {
        // A checkpoint's VM: loaded, run, and its agent told to go on with us.
        auto ran = vm_->run_restored();
        if (!ran) boot_failed(ran.error().message);
        log::debug("checkpoint: loaded and running after " +
                   std::to_string(ms_since(launched_at_)) + " ms");
        ses_.resume_restored();
        return;
    }
    log::debug("template: restored VM connected after " +
               std::to_string(ms_since(launched_at_)) + " ms");
    auto ran = vm_->run_restored();
    timeline_.mark("template restored");
    log::debug("template: restored VM running after " +
               std::to_string(ms_since(launched_at_)) + " ms");
    auto a = ran ? attach_template() : tl::unexpected(ran.error());
    if (!a) {
        restore_failed(a.error().message);
        return;
    }
    ses_.attach_restored(*a);
}

// A restored template whose channel becomes vsock (start_vmm): run once
// QEMU has connected the template's port and QMP; husk-vsock's device is
// plugged in, then the share and NICs (the guest probes them meanwhile);
// and the agent, which listens on vsock as a template (boot.cpp), is
// attached once the dial reaches it.
void Shim::attach_restored_vsock() {
    if (!vsock_plugged_) {
        if (!serial_idle_) return;
        log::debug("template: restored VM connected after " + std::to_string(ms_since(launched_at_)) + " ms");
        auto ran = vm_->run_restored();
        timeline_.mark("template restored");
        if (!ran) {
            restore_failed(ran.error().message);
            return;
        }
        if (auto plugged = vm_->add_vsock(); !plugged) {
            // The guest is fine, and its agent still reads the template's
            // port: the container goes on with virtio-serial.
            log::warn("husk-vsock's device could not be plugged in (" + plugged.error().message +
                      "): the channel stays virtio-serial");
            plug_vsock_ = false;
            hybrid_vsock_.clear();
            chan_ = std::move(serial_idle_);
            attached_ = true;
            auto a = attach_template();
            if (!a) {
                restore_failed(a.error().message);
                return;
            }
            ses_.attach_restored(*a);
            return;
        }
        auto a = attach_template();
        if (!a) {
            restore_failed(a.error().message);
            return;
        }
        log::debug("template: restored VM running, husk-vsock's device plugged in, after " +
                   std::to_string(ms_since(launched_at_)) + " ms");
        pending_attach_ = std::move(*a);
        vsock_plugged_ = true;  // the loop dials the agent now
        return;
    }
    if (!chan_ || !pending_attach_) return;
    attached_ = true;
    log::debug("template: the agent answered on vsock after " + std::to_string(ms_since(launched_at_)) + " ms");
    ses_.attach_restored(*pending_attach_);
    pending_attach_.reset();
}

// A template that did not restore (the VMM refused it, the guest did not
// answer, the share could not be added) is dropped, and the container's
// VM boots on its own instead.
bool Shim::restore_failed(const std::string& why) {
    if (!restoring_) return false;
    auto ms = ms_since(launched_at_);
    // (A REST-API VMM's launch error carries its log's tail already.)
    std::string tail = why.find(kVmmLogTail) == std::string::npos
                           ? sys::read_file(paths_.vmm_log, 1 << 16).value_or("")
                           : "";
    if (tail.size() > 300) tail = tail.substr(tail.size() - 300);
    while (!tail.empty() && tail.back() == '\n') tail.pop_back();
    log::warn("template " + template_key_ + " did not restore after " + std::to_string(ms) + " ms (" + why +
              (tail.empty() ? "" : "; vmm: " + tail) + "): dropped, booting the VM instead");
    templates::remove(template_dir_, template_key_);
    if (vm_) (void)vm_->stop();
    vm_.reset();
    vm_died_ = false;
    chan_.reset();
    dial_.reset();
    agent_listen_.reset();
    qmp_listen_.reset();
    console_r_.reset();
    console_tail_.clear();
    ::unlink(paths_.agent_sock.c_str());
    ::unlink(paths_.qmp_sock.c_str());
    ::unlink(paths_.vsock_sock.c_str());  // a REST-API VMM's (or husk-vsock's), bound again by the next
    ::unlink(paths_.vsock_vhost_sock.c_str());
    plug_vsock_ = vsock_plugged_ = false;
    serial_idle_.reset();
    pending_attach_.reset();
    hybrid_vsock_.clear();
    ses_.restart_boot();
    restoring_ = attached_ = qmp_attached_ = false;
    template_shape_.clear();
    template_why_ = "the template did not restore";
    relaunched_ = true;
    if (auto r = start_vmm(false); !r) abort_create(r.error().context("start vm"));
    return true;
}

}  // namespace husk::shimd
