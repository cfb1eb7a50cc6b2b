// husk-vsock: a vhost-user-vsock backend with Firecracker's hybrid vsock
// on the host side (device.h), for QEMU hosts without /dev/vhost-vsock.
// One per VM, started by husk (hypervisors/vsock_backend.h) in a jail of
// its own; it serves the one front-end that connects to its vhost-user
// socket and ends when that front-end goes.
//
//   husk-vsock --socket-fd N --uds-fd M --uds PATH --guest-cid CID
//
// N: the vhost-user socket, listening; M: the hybrid socket, listening,
// bound at PATH (guest-initiated streams go to PATH_<port>).
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "husk/numbers.h"
#include "hypervisors/husk-vsock/device.h"
#include "hypervisors/husk-vsock/vhost_user.h"
#include "sys/sys.h"

using namespace husk;
using namespace husk::vsock;

namespace {

[[noreturn]] void usage(const std::string& why) {
    std::fprintf(stderr, "husk-vsock: %s\nusage: husk-vsock --socket-fd N --uds-fd M --uds PATH --guest-cid CID\n", why.c_str());
    std::exit(2);
}

struct Rings : Queues {
    VhostUser& vu;
    Virtqueue idle;  // what the device sees of a ring that is not running
    explicit Rings(VhostUser& v) : vu(v) {}
    void update() {
        rx = vu.running(0) ? &vu.queue(0) : &idle;
        tx = vu.running(1) ? &vu.queue(1) : &idle;
        mem = &vu.memory();
    }
    void interrupt(Virtqueue& q) override {
        int fd = vu.call_fd(&q == &vu.queue(0) ? 0 : 1);
        uint64_t one = 1;
        if (fd >= 0 && ::write(fd, &one, sizeof one) < 0 && errno != EAGAIN) std::perror("husk-vsock: call");
    }
};

}  // namespace

int main(int argc, char** argv) {
    int socket_fd = -1, uds_fd = -1;
    std::string uds;
    uint64_t cid = 0;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) usage(a + " needs a value");
        std::string v = argv[++i];
        auto num = [&](uint64_t max) {
            auto n = parse_number<uint64_t>(v);
            if (!n || *n > max) usage(a + " " + v + ": not a number up to " + std::to_string(max));
            return *n;
        };
        if (a == "--socket-fd") socket_fd = int(num(1 << 20));
        else if (a == "--uds-fd") uds_fd = int(num(1 << 20));
        else if (a == "--uds") uds = v;
        else if (a == "--guest-cid") cid = num(0xfffffffeull);
        else usage("unknown option " + a);
    }
    if (socket_fd < 0 || uds_fd < 0 || uds.empty() || cid < 3) usage("--socket-fd, --uds-fd, --uds and a --guest-cid of 3 or more are needed");
    ::signal(SIGPIPE, SIG_IGN);

    auto conn = sys::accept(socket_fd);  // the VMM connects as it starts
    if (!conn) usage(conn.error().message);
    ::close(socket_fd);

    VhostUser vu(cid);
    Rings rings(vu);
    rings.update();
    Device dev(cid, uds, sys::Fd(uds_fd), rings);
    vu.on_stop = [&] { dev.release_rx(); };
    std::string last_error;
    std::vector<pollfd> fds;
    for (;;) {
        fds.clear();
        fds.push_back({conn->get(), POLLIN, 0});
        for (int i = 0; i < kQueues; ++i) fds.push_back({vu.running(i) ? vu.kick_fd(i) : -1, POLLIN, 0});
        size_t dev_at = fds.size();
        dev.poll_set(fds);
        int n = ::poll(fds.data(), fds.size(), -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            std::perror("husk-vsock: poll");
            return 1;
        }
        if (fds[0].revents) {
            auto m = read_message(conn->get());
            if (!m) {
                std::fprintf(stderr, "husk-vsock: %s\n", m.error().message.c_str());
                return 1;
            }
            if (!*m) return 0;  // the VMM is gone: so is its device
            auto reply = vu.handle(std::move(**m));
            if (!reply) {
                std::fprintf(stderr, "husk-vsock: %s\n", reply.error().message.c_str());
                return 1;
            }
            if (*reply) {
                if (auto w = write_message(conn->get(), **reply); !w) {
                    std::fprintf(stderr, "husk-vsock: %s\n", w.error().message.c_str());
                    return 1;
                }
            }
            rings.update();
            dev.process();  // a ring just enabled may hold buffers already
            continue;       // the rings may have moved: poll again with the new set
        }
        for (int i = 0; i < kQueues; ++i)
            if (fds[1 + i].revents) {
                uint64_t v;
                while (::read(vu.kick_fd(i), &v, sizeof v) > 0) {
                }
            }
        dev.handle(fds.data() + dev_at, fds.size() - dev_at);
        dev.process();
        if (!dev.error().empty() && dev.error() != last_error) {
            // The guest broke a ring: it stays stopped until the driver
            // resets the device. We go on serving the other.
            last_error = dev.error();
            std::fprintf(stderr, "husk-vsock: %s\n", last_error.c_str());
        }
    }
}
