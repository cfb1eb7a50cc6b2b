// The stdio relay between the host's fds and the guest's streams (shim.h).
#include "shim/shim.h"

namespace husk::shimd {

void Shim::read_in(Proc& p, uint32_t fd) {
    auto& in = p.in[fd];
    char buf[proto::kMaxDataPayload];
    size_t want = std::min<size_t>(sizeof buf, in.credit.left());
    ssize_t r = ::read(in.fd, buf, want);
    uint32_t s = proto::stream_id(p.idx, fd);
    if (r > 0) {
        ses_.send(proto::encode(proto::Type::Data, s, std::string_view(buf, size_t(r))));
        in.credit.spend(uint32_t(r));
    } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {  // EIO: the pty's master is gone
        ses_.send(proto::encode(proto::Type::Close, s, ""));
        in.open = false;
    }
}

void Shim::write_out(Proc& p, uint32_t i) {
    auto& o = p.out[i];
    ssize_t w = o.sock ? ::send(o.fd, o.data.data(), o.data.size(), MSG_DONTWAIT | MSG_NOSIGNAL)
                : o.nb ? ::write(o.nb.get(), o.data.data(), o.data.size())
                       : ::write(o.fd, o.data.data(), std::min(o.data.size(), o.chunk));
    if (w > 0) {
        o.data.erase(0, size_t(w));
        o.owed += uint32_t(w);
        if (o.owed >= shim::kCreditBatch || o.data.empty()) {
            ses_.send(proto::encode_credit(o.stream, o.owed));
            o.owed = 0;
        }
    } else if (w < 0 && errno != EINTR && errno != EAGAIN) {
        // Reader gone: keep draining the guest so it never blocks.
        ses_.send(proto::encode_credit(o.stream, uint32_t(o.owed + o.data.size())));
        o.owed = 0;
        o.data.clear();
        o.dead = true;
    }
}

// Writes out what the relay holds for the callers' fds, waiting for a slow
// reader until `limit` has passed. For a container that ends here without
// the loop's draining (a checkpoint): what it wrote before the save is the
// caller's, as a pipe keeps what a process wrote before it died. (The
// agent sent it before its quiesce answer, so the restored container does
// not send it again: dropped, it would be lost.)
void Shim::flush_outputs(std::chrono::milliseconds limit) {
    auto deadline = Clock::now() + limit;
    for (auto& [idx, p] : ses_.procs) {
        for (auto& [i, o] : p.out) {
            while (!o.data.empty() && o.fd >= 0 && !o.dead) {
                auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
                if (left <= 0) {
                    log::warn("a reader took none of the last " + std::to_string(o.data.size()) +
                              " bytes of a stream in time: dropped");
                    return;
                }
                pollfd pfd{o.nb ? o.nb.get() : o.fd, POLLOUT, 0};
                int r = ::poll(&pfd, 1, int(left));
                if (r < 0 && errno != EINTR) return;
                if (r > 0) write_out(p, i);
            }
        }
    }
}

// Propagate EOF once a stream is drained.
void Shim::close_drained(Proc& p) {
    for (auto& [i, o] : p.out) {
        if (!o.eof || !o.data.empty() || o.fd < 0) continue;
        o.nb.reset();  // the reader sees EOF only once every write end is closed
        // A two-way preserved socket stays open for its other direction:
        // its peer sees EOF from the shutdown.
        if (o.sock && p.in.count(i)) ::shutdown(o.fd, SHUT_WR);
        if (o.own) {
            o.own.reset();
        } else {
            ::close(o.fd);
            int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
            if (null >= 0 && null != o.fd) {  // keep fds 1/2 occupied
                dup2(null, o.fd);
                ::close(null);
            }
        }
        o.fd = -1;
        o.dead = true;
    }
}

}  // namespace husk::shimd
