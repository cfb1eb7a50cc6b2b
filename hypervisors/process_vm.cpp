#include "hypervisors/process_vm.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <thread>

#include "sys/sys.h"

namespace husk {

bool ProcessVm::wait_exit(int ms) {
    if (pid_ <= 0) return true;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
        int st;
        pid_t r = ::waitpid(pid_, &st, WNOHANG);
        if (r == pid_ || (r < 0 && errno == ECHILD)) {
            pid_ = -1;
            return true;
        }
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

Result<uint64_t> ProcessVm::page_out(const std::vector<std::string>& files) {
    if (pid_ <= 0) return uint64_t(0);
    std::vector<pid_t> pids = sys::child_pids(pid_);
    pids.insert(pids.begin(), pid_);
    uint64_t done = 0;
    for (pid_t p : pids) {
        auto maps = sys::read_file("/proc/" + std::to_string(p) + "/maps");
        if (!maps) continue;  // gone meanwhile
        auto ranges = sys::file_mappings(*maps, files);
        if (ranges.empty()) continue;
        auto fd = TRY(sys::pidfd_open(p));
        done += TRY(sys::process_madvise(fd.get(), ranges, MADV_PAGEOUT));
    }
    return done;
}

Result<void> ProcessVm::attach_control(int fd) {
    ::close(fd);
    return {};
}

Result<void> ProcessVm::stop() {
    kill_now();
    return {};
}

static void kill_and_reap(pid_t pid) {
    ::kill(pid, SIGKILL);
    int st;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
}

void ProcessVm::kill_now() {
    if (pid_ > 0) kill_and_reap(pid_);
    pid_ = -1;
    for (pid_t h : helpers_) kill_and_reap(h);
    helpers_.clear();
}

}  // namespace husk
