// A VMM that is one child process of the shim. Whatever a driver's
// graceful stop does, SIGKILL and a reap are its last word.
#pragma once
#include <sys/types.h>

#include <string>
#include <vector>

#include "husk/hypervisor.h"

namespace husk {

class ProcessVm : public Vm {
public:
    explicit ProcessVm(pid_t pid) : pid_(pid) {}
    ~ProcessVm() override { kill_now(); }
    pid_t pid() const override { return pid_; }
    // A process that serves this VM (virtiofsd's jail): it goes with it.
    void adopt(pid_t helper) { helpers_.push_back(helper); }
    // No control connection to keep (only QEMU's QMP needs one).
    Result<void> attach_control(int fd) override;
    // The container is gone when we stop: nothing in the guest to flush.
    Result<void> stop() override;

protected:
    // Return the pages of the VMM's mappings of `files` (as the VMM names
    // them) to the host: they are clean file pages, re-read if ever touched
    // again. The VMM is our child, or a jail reaper's.
    Result<uint64_t> page_out(const std::vector<std::string>& files);
    // Wait up to `ms` for the VMM to exit on its own; true once reaped.
    bool wait_exit(int ms);
    void kill_now();
    pid_t pid_;
    std::vector<pid_t> helpers_;
};

}  // namespace husk
