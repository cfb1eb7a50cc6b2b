// husk checkpoint and husk restore, the shim's part (husk/checkpoint.h,
// docs/design.md "Checkpoint and restore"). Checkpoint: the agent is
// quiesced (it sends nothing more), the VM is saved paused into the image
// with a copy of its rootfs disk, then it runs on (--leave-running) or the
// container ends. Restore: a new shim loads the image into a new VM of the
// same shape (launch_vm, start_vmm) and resumes the agent with itself.
#include "shim/shim.h"

namespace husk::shimd {

std::string Shim::checkpoint_refusal() const {
    if (checkpoint_) return "a checkpoint of it is in progress";
    if (paused_) return "container is paused (podman and runc checkpoint running containers)";
    if (ses_.phase != Phase::Running) return "container is not running";
    if (!hv_->capabilities().checkpoint) return "the " + hv_->name() + " driver cannot checkpoint a VM (qemu, firecracker and cloud-hypervisor can)";
    if (!share_disk_)
        return std::string("its rootfs is shared with the VM (") + (host_.share_fs == ShareFs::VirtioFs ? "virtio-fs" : "9p") +
               "), and QEMU 7.2 cannot migrate a VM with a mounted 9p share or a virtio-fs device: create the container "
               "with the annotation org.husk.rootfs=disk to checkpoint it";
    if (vm_shape_.empty()) return "the driver cannot describe its VM for a restore";
    // A template's clone whose devices were hot-plugged after its restore
    // (QEMU, Cloud Hypervisor) is no VM a bundle's boot config describes.
    if (!template_shape_.empty() && !hv_->capabilities().template_holds_nics)
        return "its VM came from a template, with devices plugged in after the restore, which a restore cannot rebuild";
    if (!members_.empty()) return "it is a pod's sandbox: its VM holds other containers too";
    for (const auto& [idx, p] : ses_.procs)
        if (idx != 0 && !p.exited) return "an exec process is running in it";
    if (!init_extra_fds_.empty()) return "its process has preserved fds (--preserve-fds), which a restore cannot give back";
    if (ses_.in_flight()) return "the guest is busy with a request; try again";
    return "";
}

void Shim::start_checkpoint(uint64_t cid, const proto::ControlRequest& req) {
    if (auto why = checkpoint_refusal(); !why.empty()) return reply(cid, false, "checkpoint: " + why);
    checkpoint_ = CheckpointJob{cid, req.image_path, req.leave_running, "", Clock::now(), {}};
    clients_[cid].busy = true;  // answered once the save is done (checkpoint_answered)
    log::debug("checkpoint: into " + checkpoint_->dir + (checkpoint_->leave_running ? ", leaving it running" : ""));
    ses_.request("quiesce", json::object());
}

// The agent quiesced: save. Or it relays again after a save that left the
// container running (or failed): answer.
void Shim::checkpoint_answered(const std::string& method, bool ok) {
    if (!checkpoint_) return;
    CheckpointJob job = *checkpoint_;
    if (method == "resume") {
        checkpoint_.reset();
        if (!ok && job.error.empty()) job.error = "checkpoint: the agent did not resume";
        if (!job.error.empty()) return reply(job.client, false, job.error);
        return reply(job.client, proto::ControlReply{.stats = checkpoint::stats_to_json(job.stats)});
    }
    if (!ok) {
        checkpoint_.reset();
        return reply(job.client, false, "checkpoint: the agent did not quiesce");
    }
    auto saved = save_checkpoint();
    if (saved) checkpoint_->stats = *saved;
    if (saved && !job.leave_running) {
        // Checkpointed: the container ends here, as runc's does (the caller
        // deletes it). The VMM goes at once, paused, its disk saved.
        log::debug("checkpoint: saved in " + std::to_string(ms_since(job.began)) + " ms; the container stops");
        flush_outputs(std::chrono::seconds(5));  // before the answer: the caller may read its files at once
        reply(job.client, proto::ControlReply{.stats = checkpoint::stats_to_json(*saved)});
        flush_client(job.client);
        vm_.reset();
        finish(0, SIGKILL);
    }
    if (!saved) {
        // (save_checkpoint has the VM running again.)
        checkpoint_->error = "checkpoint: " + saved.error().message;
        log::warn(checkpoint_->error + "; the container runs on");
        (void)sys::remove_all(job.dir + "/" + checkpoint::kInfoFile);  // not an image to restore
    } else if (auto r = vm_->resume(); !r) {
        log::error("checkpoint: the VM did not resume: " + r.error().message);
        finish(255, 0);
    }
    // The agent relays again; its answer answers the caller.
    ses_.request("resume", proto::to_json(proto::Resume{false}));
}

// The VM, paused, into the image directory; then the rootfs disk (which
// the save flushed and let go of) and the description. The VM stays paused
// when all went well, and runs again when not.
Result<checkpoint::DumpStats> Shim::save_checkpoint() {
    bool saved = false;  // the VMM saved it: paused now
    auto r = write_checkpoint(saved);
    if (!r && saved) (void)vm_->resume();
    return r;
}

Result<checkpoint::DumpStats> Shim::write_checkpoint(bool& saved) {
    auto us = [](Clock::time_point a, Clock::time_point b) {
        return uint32_t(std::min<long long>(UINT32_MAX, std::chrono::duration_cast<std::chrono::microseconds>(b - a).count()));
    };
    checkpoint::DumpStats stats;
    const std::string& dir = checkpoint_->dir;
    TRY(sys::mkdir_p(dir, 0700));
    std::string state = dir + "/" + checkpoint::kStateFile;
    auto paused = Clock::now();
    stats.freezing_us = us(checkpoint_->began, paused);  // the agent's quiesce
    {
        auto fd = TRY(sys::open(state, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        TRY(vm_->checkpoint(fd.get()));  // (a failed save runs the VM on)
        saved = true;
        if (::fsync(fd.get()) < 0) return fail_errno("sync " + state);
        struct stat st{};
        if (::fstat(fd.get(), &st) == 0) stats.pages_written = uint64_t(st.st_size) / 4096;
    }
    auto dumped = Clock::now();
    stats.memdump_us = us(paused, dumped);
    TRY_CTX(sys::copy_file_sparse(host_.share_disk, dir + "/" + checkpoint::kDiskFile), "the rootfs disk");
    stats.memwrite_us = us(dumped, Clock::now());
    TRY(sys::write_file(dir + "/" + checkpoint::kInventoryFile, checkpoint::criu_inventory(), 0600));
    json fds = json::array();
    for (int fd = 0; fd <= 2; ++fd) fds.push_back(sys::read_link("/proc/self/fd/" + std::to_string(fd)).value_or("/dev/null"));
    TRY(sys::write_file(dir + "/" + checkpoint::kDescriptorsFile, fds.dump(), 0600));
    checkpoint::Info info;
    info.hypervisor = hv_->name();
    info.protocol = proto::kVersion;
    info.vm_shape = vm_shape_;
    info.id = args_.id;
    info.terminal = ses_.procs[0].tty;
    info.saved = int64_t(::time(nullptr));
    TRY(sys::write_file_atomic(dir + "/" + checkpoint::kInfoFile, checkpoint::info_to_json(info), 0600));
    stats.frozen_us = us(paused, Clock::now());
    return stats;
}

// Restore: the image is one of ours, of this driver, with a terminal as
// this container has one or not; its rootfs disk becomes ours.
Result<void> Shim::prepare_restore(HostFacts& host) {
    restore_info_ = TRY(checkpoint::read_image(args_.restore));
    if (restore_info_.hypervisor != hv_->name())
        return fail("checkpoint image " + args_.restore + " is of a " + restore_info_.hypervisor + " VM; this container's driver is " +
                        hv_->name(), EINVAL);
    if (restore_info_.protocol != proto::kVersion)
        return fail("checkpoint image " + args_.restore + ": its guest's agent speaks protocol " + std::to_string(restore_info_.protocol) +
                        ", this husk " + std::to_string(proto::kVersion) + " (a checkpoint restores with the husk that saved it)",
                    EINVAL);
    if (restore_info_.terminal != spec_.process->terminal)
        return fail(std::string("checkpoint image ") + args_.restore + ": its process " +
                        (restore_info_.terminal ? "had a" : "had no") + " terminal; config.json's process.terminal says otherwise",
                    EINVAL);
    share_disk_ = true;
    host.share_disk = paths_.dir + "/share.img";
    return with_context(sys::copy_file_sparse(args_.restore + "/" + checkpoint::kDiskFile, host.share_disk), "checkpoint image");
}

// The restored agent says what of the container is still open: its init
// (nothing else ran when it was saved). Our streams follow; the creator
// hears the container is running.
Result<void> Shim::resumed(const proto::Resumed& r) {
    Proc& init = ses_.procs[0];
    bool seen = false;
    for (const auto& p : r.procs) {
        if (p.process != 0) return fail("the checkpoint's guest has process " + std::to_string(p.process) + " besides the container's", EPROTO);
        seen = true;
        for (uint32_t fd : p.out)
            if (!init.out.count(fd)) return fail("the checkpoint's process has an output stream " + std::to_string(fd) + " ours has not", EPROTO);
        for (const auto& i : p.in)
            if (!init.in.count(i.fd)) return fail("the checkpoint's process has an input stream " + std::to_string(i.fd) + " ours has not", EPROTO);
        for (auto& [fd, o] : init.out)
            if (std::find(p.out.begin(), p.out.end(), fd) == p.out.end()) o.eof = true;
        for (auto& [fd, in] : init.in) {
            auto it = std::find_if(p.in.begin(), p.in.end(), [f = fd](const proto::ResumedInput& i) { return i.fd == f; });
            if (it == p.in.end()) in.open = false;
            else in.credit = proto::SendCredit(ses_.stdin_window, ses_.stdin_window - std::min(it->buffered, ses_.stdin_window));
        }
    }
    if (!seen) return fail("the checkpoint's guest has no container process", EPROTO);
    resuming_ = false;
    checkpoint_state_.reset();
    booted();
    log::debug("checkpoint: restored, the container runs on");
    report_created(status::kRunning);
    return {};
}

}  // namespace husk::shimd
