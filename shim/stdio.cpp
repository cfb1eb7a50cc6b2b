// The stdio relay between the host's fds and the guest's streams (shim.h).
#include "shim/shim.h"

namespace husk::shimd {

void Shim::read_stdin(Proc& p) {
    char buf[proto::kMaxDataPayload];
    size_t want = std::min<size_t>(sizeof buf, p.stdin_credit);
    ssize_t r = ::read(p.in_fd, buf, want);
    uint32_t s = proto::stream_id(p.idx, proto::Stdin);
    if (r > 0) {
        ses_.send(proto::encode(proto::Type::Data, s, std::string_view(buf, size_t(r))));
        p.stdin_credit -= uint32_t(r);
    } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {  // EIO: the pty's master is gone
        ses_.send(proto::encode(proto::Type::Close, s, ""));
        p.stdin_open = false;
    }
}

void Shim::write_out(Proc& p, int i) {
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

// Propagate EOF once a stream is drained.
void Shim::close_drained(Proc& p) {
    for (int i = 1; i <= 2; ++i) {
        auto& o = p.out[i];
        if (!o.eof || !o.data.empty() || o.fd < 0) continue;
        o.nb.reset();  // the reader sees EOF only once every write end is closed
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
