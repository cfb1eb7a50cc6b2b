// husk-vsock against an untrusted guest and a confused front-end
// (hypervisors/husk-vsock/): whatever the input, the backend never reads
// or writes outside guest memory (a buffer of exactly its size: ASan traps
// one byte past it), never crashes, never loops.
//
// The first byte picks what the input is:
//  * 0: vhost-user messages (header + payload, back to back), each given
//    the fds its kind carries, then the device runs on what they set up;
//  * else: the contents of a guest that set up its rings properly: the tx
//    and rx descriptor tables and avail rings, then the packet buffers. A
//    host socket listens for port 1024, so its packets can open a stream
//    and send on it.
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "../unit/vsock_guest.h"
#include "sys/sys.h"

using namespace husk::vsock;
using namespace husk::vsock::testing;

namespace {

void run_messages(const uint8_t* data, size_t size) {
    Guest g;
    g.update();
    Device dev(3, "/nonexistent/vsock.sock", husk::sys::Fd(), g);
    g.vu.on_stop = [&] { dev.release_rx(); };
    size_t at = 0;
    while (size - at >= 12) {
        Message m;
        uint32_t len;
        std::memcpy(&m.request, data + at, 4);
        std::memcpy(&m.flags, data + at + 4, 4);
        std::memcpy(&len, data + at + 8, 4);
        at += 12;
        len = uint32_t(std::min<size_t>(len, size - at));
        m.payload.assign(reinterpret_cast<const char*>(data + at), len);
        at += len;
        size_t fds = 0;
        if (m.request == kSetMemTable && m.payload.size() >= 4) {
            uint32_t n;
            std::memcpy(&n, m.payload.data(), 4);
            fds = std::min<uint32_t>(n, kMaxRegions);
        } else if (m.request == kSetVringKick || m.request == kSetVringCall || m.request == kSetVringErr) {
            fds = 1;
        }
        for (size_t i = 0; i < fds; ++i) m.fds.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (!g.vu.handle(std::move(m))) break;  // the session would end here
        g.update();
        if (g.vu.running(0) && g.vu.running(1)) dev.process();
    }
}

// <uds>_1024 listens for the whole run; each input's streams are
// accepted and closed after it (the backlog must not fill: connect waits).
const std::string& uds() {
    static std::string path = "/tmp/husk-fuzz-vsock-" + std::to_string(::getpid()) + ".sock";
    return path;
}
int port_listener() {
    static int fd = [] {
        ::unlink((uds() + "_1024").c_str());
        auto l = husk::sys::unix_listen(uds() + "_1024", 64);
        if (!l) __builtin_trap();
        (void)husk::sys::set_nonblock(l->get(), true);
        return l->release();
    }();
    return fd;
}

void run_guest(const uint8_t* data, size_t size) {
    int listener = port_listener();
    Guest g;
    if (!g.start()) __builtin_trap();
    Device dev(3, uds(), husk::sys::Fd(), g);
    // Fill the rings from the input: tx descriptors and avail ring, the
    // same for rx, then the buffers.
    auto take = [&](uint64_t off, size_t n) {
        size_t k = std::min(n, size);
        std::memcpy(g.at(off), data, k);
        data += k;
        size -= k;
    };
    take(g.desc_off(1), 16 * kNum);
    take(g.avail_off(1), 4 + 2 * kNum);
    take(g.desc_off(0), 16 * kNum);
    take(g.avail_off(0), 4 + 2 * kNum);
    take(kBufArea, kMemSize - kBufArea);
    for (int i = 0; i < 3; ++i) dev.process();
    for (int c; (c = ::accept(listener, nullptr, nullptr)) >= 0;) ::close(c);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    if (data[0] == 0) run_messages(data + 1, size - 1);
    else run_guest(data + 1, size - 1);
    return 0;
}
