// The virtio-vsock device of one VM: its queues, its connections' state
// and credit both ways, and the unix sockets on the host side (Firecracker's
// hybrid vsock handshake). A little over 500 lines on purpose: one state
// machine, whose packet, credit and socket rules read best side by side.
#include "hypervisors/husk-vsock/device.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "husk/numbers.h"
#include "sys/sys.h"

namespace husk::vsock {

namespace {
template <typename T>
T get(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof v);  // little-endian host (x86-64, arm64)
    return v;
}
template <typename T>
void put(uint8_t* p, T v) { std::memcpy(p, &v, sizeof v); }

constexpr size_t kMaxPendingClients = 64;
// Headers waiting for rx buffers: past this many, the guest's tx queue
// waits (a guest that sends and never posts rx buffers must not grow our
// memory with the replies it is owed).
constexpr size_t kMaxControl = 1024;

// Never SIGPIPE: a unix peer that went away is an error to handle.
ssize_t send_iov(int fd, const iovec* iov, size_t n) {
    msghdr m{};
    m.msg_iov = const_cast<iovec*>(iov);
    m.msg_iovlen = n;
    ssize_t r;
    do r = ::sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (r < 0 && errno == EINTR);
    return r;
}
constexpr size_t kConnectLineMax = 32;
}  // namespace

void encode(const Header& h, uint8_t out[kHeaderSize]) {
    put(out + 0, h.src_cid);
    put(out + 8, h.dst_cid);
    put(out + 16, h.src_port);
    put(out + 20, h.dst_port);
    put(out + 24, h.len);
    put(out + 28, h.type);
    put(out + 30, h.op);
    put(out + 32, h.flags);
    put(out + 36, h.buf_alloc);
    put(out + 40, h.fwd_cnt);
}

Header decode(const uint8_t in[kHeaderSize]) {
    Header h;
    h.src_cid = get<uint64_t>(in + 0);
    h.dst_cid = get<uint64_t>(in + 8);
    h.src_port = get<uint32_t>(in + 16);
    h.dst_port = get<uint32_t>(in + 20);
    h.len = get<uint32_t>(in + 24);
    h.type = get<uint16_t>(in + 28);
    h.op = get<uint16_t>(in + 30);
    h.flags = get<uint32_t>(in + 32);
    h.buf_alloc = get<uint32_t>(in + 36);
    h.fwd_cnt = get<uint32_t>(in + 40);
    return h;
}

std::optional<uint32_t> parse_connect(const std::string& line) {
    static const std::string kWord = "CONNECT ";
    if (line.rfind(kWord, 0) != 0) return std::nullopt;
    std::string digits = line.substr(kWord.size());
    if (digits.empty() || digits.size() > 10 || digits.find_first_not_of("0123456789") != std::string::npos)
        return std::nullopt;
    auto n = parse_number<uint64_t>(digits);
    if (!n || *n > 0xffffffffull) return std::nullopt;
    return uint32_t(*n);
}

struct Device::Conn {
    sys::Fd fd;
    uint32_t host_port = 0, guest_port = 0;
    bool connected = false;  // false: a host client's REQUEST awaits the guest's RESPONSE
    // The guest's receive room, as it last told us, and what we sent it.
    uint32_t peer_buf_alloc = 0, peer_fwd_cnt = 0, tx_cnt = 0;
    // Ours: what the guest sent, what went on to the unix socket, and
    // the fwd_cnt the guest last heard.
    uint32_t rx_cnt = 0, fwd_cnt = 0, last_adv_fwd = 0;
    std::string out;  // guest bytes the unix socket has not taken yet
    size_t out_off = 0;
    bool readable = false;  // the unix socket has bytes (or EOF) for the guest
    bool hup = false;       // its peer is gone: poll it no more
    bool peer_shut_send = false, peer_shut_rcv = false;
    bool host_eof = false;  // the unix side sends no more: the guest was told
    bool wr_shut = false;
    bool credit_queued = false;
    bool dead = false;
};

struct Device::Pending {
    sys::Fd fd;
    std::string line;
    bool done = false;
};

Device::Device(uint64_t guest_cid, std::string uds, sys::Fd listener, Queues& q)
    : cid_(guest_cid), uds_(std::move(uds)), listener_(std::move(listener)), q_(q) {
    if (listener_) (void)sys::set_nonblock(listener_.get(), true);  // accepted until EAGAIN; cannot fail on a valid fd
}
Device::~Device() = default;

Device::Conn* Device::find(uint32_t host_port, uint32_t guest_port) {
    auto it = conns_.find({host_port, guest_port});
    return it == conns_.end() || it->second->dead ? nullptr : it->second.get();
}

uint32_t Device::peer_credit(const Conn& c) const {
    uint32_t in_flight = c.tx_cnt - c.peer_fwd_cnt;
    return in_flight > c.peer_buf_alloc ? 0 : c.peer_buf_alloc - in_flight;
}

Header Device::header(const Conn& c, uint16_t op) const {
    Header h;
    h.src_cid = kHostCid;
    h.dst_cid = cid_;
    h.src_port = c.host_port;
    h.dst_port = c.guest_port;
    h.op = op;
    return h;
}

void Device::queue(const Header& h) { control_.push_back({{h.src_port, h.dst_port}, h}); }

void Device::control(const Conn& c, uint16_t op, uint32_t flags) {
    Header h = header(c, op);
    h.flags = flags;
    queue(h);
}

void Device::rst(uint32_t host_port, uint32_t guest_port) {
    Header h;
    h.src_cid = kHostCid;
    h.dst_cid = cid_;
    h.src_port = host_port;
    h.dst_port = guest_port;
    h.op = kRst;
    queue(h);
}

void Device::drop(Conn& c, bool send_rst) {
    if (c.dead) return;
    if (send_rst) rst(c.host_port, c.guest_port);
    c.dead = true;
    c.fd.reset();
}

// A credit update once half of what the guest may have in flight has
// gone on since it last heard. That is our room or, if smaller, the
// guest's own receive buffer: Debian's 6.1 guest kernel was seen never to
// have more than its 256 KiB in flight (newer Linux caps a sender at the
// smaller of the two). Counted against our 1 MiB alone, such a guest
// stopped at 256 KiB in flight and was never told it could go on.
void Device::maybe_credit(Conn& c) {
    uint32_t window = c.peer_buf_alloc ? std::min(kBufAlloc, c.peer_buf_alloc) : kBufAlloc;
    uint32_t gone = c.fwd_cnt - c.last_adv_fwd;
    if (!c.credit_queued && gone > 0 && gone >= window / 2) {
        control(c, kCreditUpdate);
        c.credit_queued = true;
    }
}

// Guest bytes on to the unix socket, as much as it takes now; then the
// half-close the guest asked for, once nothing is left to write.
void Device::drain(Conn& c) {
    while (!c.dead && c.out_off < c.out.size()) {
        iovec v{c.out.data() + c.out_off, c.out.size() - c.out_off};
        ssize_t n = send_iov(c.fd.get(), &v, 1);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) return drop(c, true);  // nobody reads it any more
        c.out_off += size_t(n);
        c.fwd_cnt += uint32_t(n);
    }
    if (c.dead) return;
    if (c.out_off == c.out.size()) {
        c.out.clear();
        c.out_off = 0;
    }
    maybe_credit(c);
    if (c.out.empty() && c.peer_shut_send) {
        if (c.peer_shut_rcv || c.host_eof) return drop(c, true);  // both ways done: the stream ends
        if (!c.wr_shut) {
            ::shutdown(c.fd.get(), SHUT_WR);
            c.wr_shut = true;
        }
    }
}

void Device::on_packet(const Header& h, const Chain& chain) {
    if (h.src_cid != cid_ || h.dst_cid != kHostCid) return;  // not the guest's, or not for us: dropped
    Conn* c = find(h.dst_port, h.src_port);
    if (h.type != kTypeStream) {
        if (h.op != kRst) rst(h.dst_port, h.src_port);
        if (c) drop(*c, false);
        return;
    }
    if (c) {
        c->peer_buf_alloc = h.buf_alloc;
        c->peer_fwd_cnt = h.fwd_cnt;
    }
    switch (h.op) {
    case kRequest: {
        if (c) return drop(*c, true);  // one stream per port pair
        auto s = sys::unix_connect(uds_ + "_" + std::to_string(h.dst_port));
        if (!s || !sys::set_nonblock(s->get(), true)) return rst(h.dst_port, h.src_port);
        auto n = std::make_unique<Conn>();
        n->fd = std::move(*s);
        n->host_port = h.dst_port;
        n->guest_port = h.src_port;
        n->connected = true;
        n->peer_buf_alloc = h.buf_alloc;
        n->peer_fwd_cnt = h.fwd_cnt;
        control(*n, kResponse);
        conns_[{h.dst_port, h.src_port}] = std::move(n);
        return;
    }
    case kResponse: {
        if (!c || c->connected) {
            if (c) return drop(*c, true);
            return rst(h.dst_port, h.src_port);
        }
        c->connected = true;
        // A fresh socket's buffer is empty: the line goes at once.
        std::string ok = "OK " + std::to_string(c->host_port) + "\n";
        if (::send(c->fd.get(), ok.data(), ok.size(), MSG_NOSIGNAL) != ssize_t(ok.size())) drop(*c, true);
        return;
    }
    case kRst:
        if (c) drop(*c, false);
        return;
    case kShutdown:
        if (!c) return rst(h.dst_port, h.src_port);
        if (h.flags & kShutdownRcv) c->peer_shut_rcv = true;
        if (h.flags & kShutdownSend) c->peer_shut_send = true;
        return drain(*c);
    case kRw: {
        if (!c || !c->connected || c->peer_shut_send) {
            if (c) return drop(*c, true);
            return rst(h.dst_port, h.src_port);
        }
        // Past the room we gave it: a guest that breaks the credit rules
        // loses the stream, and what we hold stays bounded.
        if (uint64_t(c->rx_cnt - c->fwd_cnt) + h.len > kBufAlloc) return drop(*c, true);
        c->rx_cnt += h.len;
        size_t off = 0;
        if (c->out.empty()) {
            auto iov = slice(chain.readable, kHeaderSize, h.len);
            ssize_t n = iov.empty() ? 0 : send_iov(c->fd.get(), iov.data(), iov.size());
            if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return drop(*c, true);
            off = n > 0 ? size_t(n) : 0;
            c->fwd_cnt += uint32_t(off);
        }
        if (off < h.len) {
            size_t at = c->out.size();
            c->out.resize(at + (h.len - off));
            copy_from(chain.readable, kHeaderSize + off, c->out.data() + at, h.len - off);
        }
        return maybe_credit(*c);
    }
    case kCreditUpdate:
        if (!c) return rst(h.dst_port, h.src_port);
        return;
    case kCreditRequest:
        if (!c) return rst(h.dst_port, h.src_port);
        return control(*c, kCreditUpdate);
    default:
        if (c) return drop(*c, true);
        return rst(h.dst_port, h.src_port);
    }
}

bool Device::take_tx() {
    bool used = false;
    while (control_.size() < kMaxControl) {
        auto next = q_.tx->pop(*q_.mem);
        if (!next) {
            error_ = next.error().message;
            break;
        }
        if (!*next) break;
        const Chain& c = **next;
        uint8_t raw[kHeaderSize];
        if (c.readable_len >= kHeaderSize) {
            copy_from(c.readable, 0, raw, kHeaderSize);  // once: the guest may rewrite its buffer
            Header h = decode(raw);
            if (h.len <= kMaxPayload && h.len <= c.readable_len - kHeaderSize) on_packet(h, c);
            else if (h.src_cid == cid_ && h.op != kRst) rst(h.dst_port, h.src_port);  // a length that lies
        }
        q_.tx->push(c.head, 0);
        used = true;
    }
    if (used && q_.tx->wants_interrupt()) q_.interrupt(*q_.tx);
    return control_.size() >= kMaxControl;  // stopped for the replies, not for want of packets
}

// The next header waiting for the guest into `chain`.
bool Device::send_control() {
    if (control_.empty() || !held_rx_) return false;
    auto [key, h] = control_.front();
    control_.pop_front();
    auto it = conns_.find(key);
    if (it != conns_.end() && !(h.op == kRst && it->second->dead)) {
        Conn& c = *it->second;
        h.buf_alloc = kBufAlloc;
        h.fwd_cnt = c.fwd_cnt;
        c.last_adv_fwd = c.fwd_cnt;
        if (h.op == kCreditUpdate) c.credit_queued = false;
    }
    uint8_t raw[kHeaderSize];
    encode(h, raw);
    copy_to(held_rx_->writable, 0, raw, kHeaderSize);
    q_.rx->push(held_rx_->head, kHeaderSize);
    held_rx_.reset();
    rx_used_ = true;
    return true;
}

// Bytes from the unix socket into the held rx buffer, as many as the
// guest has room for.
bool Device::send_data(Conn& c) {
    uint32_t room = std::min<uint64_t>({peer_credit(c), held_rx_->writable_len - kHeaderSize, kMaxPayload});
    if (!room) return false;  // a buffer with room for a header only: for control packets
    auto iov = slice(held_rx_->writable, kHeaderSize, room);
    ssize_t n;
    do n = ::readv(c.fd.get(), iov.data(), int(iov.size()));
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        c.readable = false;
        return false;
    }
    if (n < 0) {
        drop(c, true);
        return false;
    }
    if (n == 0) {  // the host side is done sending: so is the stream, this way
        c.readable = false;
        c.host_eof = true;
        if (c.peer_shut_send && c.out.empty()) drop(c, true);
        else control(c, kShutdown, kShutdownSend);
        return false;
    }
    Header h = header(c, kRw);
    h.len = uint32_t(n);
    h.buf_alloc = kBufAlloc;
    h.fwd_cnt = c.fwd_cnt;
    c.last_adv_fwd = c.fwd_cnt;
    c.tx_cnt += uint32_t(n);
    uint8_t raw[kHeaderSize];
    encode(h, raw);
    copy_to(held_rx_->writable, 0, raw, kHeaderSize);
    q_.rx->push(held_rx_->head, uint32_t(kHeaderSize + size_t(n)));
    held_rx_.reset();
    rx_used_ = true;
    return true;
}

void Device::fill_rx() {
    for (;;) {
        if (!held_rx_) {
            auto next = q_.rx->pop(*q_.mem);
            if (!next) {
                error_ = next.error().message;
                break;
            }
            if (!*next) break;
            held_rx_ = std::move(**next);
            if (held_rx_->writable_len < kHeaderSize) {  // no room for a header: given back empty
                q_.rx->push(held_rx_->head, 0);
                held_rx_.reset();
                rx_used_ = true;
                continue;
            }
        }
        if (send_control()) continue;
        bool sent = false;
        for (auto& [key, c] : conns_) {
            if (c->dead || !c->connected || !c->readable || c->peer_shut_rcv || c->host_eof || !peer_credit(*c)) continue;
            if (send_data(*c)) {
                sent = true;
                break;
            }
        }
        if (!sent && control_.empty()) break;  // nothing for the guest: keep the buffer
    }
    if (rx_used_ && q_.rx->wants_interrupt()) q_.interrupt(*q_.rx);
    rx_used_ = false;
}

void Device::process() {
    bool more = q_.tx->ready() && take_tx();
    for (auto& [key, c] : conns_) drain(*c);
    if (q_.rx->ready()) fill_rx();
    // tx waited for the replies to go: once they have, on with it (the
    // guest kicked once; it will not again for what it already queued).
    while (more && control_.size() < kMaxControl && q_.tx->ready()) {
        more = take_tx();
        fill_rx();
    }
    std::erase_if(conns_, [](const auto& kv) { return kv.second->dead; });
    std::erase_if(pending_, [](const auto& p) { return p->done; });
}

void Device::release_rx() {
    if (held_rx_ && q_.rx->ready()) q_.rx->unpop();
    held_rx_.reset();
}

uint32_t Device::free_host_port() {
    for (;;) {
        uint32_t p = next_port_++;
        if (next_port_ == 0) next_port_ = kFirstHostPort;
        bool taken = std::any_of(conns_.begin(), conns_.end(), [&](const auto& kv) { return kv.first.first == p; });
        if (!taken) return p;
    }
}

void Device::accept_clients() {
    while (pending_.size() < kMaxPendingClients) {
        int s = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (s < 0) return;
        auto p = std::make_unique<Pending>();
        p->fd = sys::Fd(s);
        pending_.push_back(std::move(p));
    }
}

void Device::read_connect(Pending& p) {
    for (;;) {
        char ch;  // a byte at a time: what follows the line is the guest's
        ssize_t n = ::read(p.fd.get(), &ch, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0 || (ch != '\n' && p.line.size() >= kConnectLineMax)) {
            p.done = true;  // gone, or not a CONNECT: closed
            return;
        }
        if (ch != '\n') {
            p.line += ch;
            continue;
        }
        p.done = true;
        auto port = parse_connect(p.line);
        if (!port || !q_.rx->ready()) return;  // closed: the dialer retries
        auto c = std::make_unique<Conn>();
        c->fd = std::move(p.fd);
        c->host_port = free_host_port();
        c->guest_port = *port;
        control(*c, kRequest);
        conns_[{c->host_port, c->guest_port}] = std::move(c);
        return;
    }
}

void Device::poll_set(std::vector<pollfd>& out) {
    if (listener_) out.push_back({listener_.get(), POLLIN, 0});
    for (auto& p : pending_) out.push_back({p->fd.get(), POLLIN, 0});
    polled_.clear();
    for (auto& [key, c] : conns_) {
        polled_.push_back(key);
        short ev = 0;
        if (c->connected && !c->readable && !c->host_eof && !c->peer_shut_rcv && peer_credit(*c)) ev |= POLLIN;
        if (!c->out.empty()) ev |= POLLOUT;
        // One whose peer hung up is read when there is room in the guest
        // (the rx kick wakes us), and polled no more: HUP never clears.
        out.push_back({c->hup ? -1 : c->fd.get(), ev, 0});
    }
}

void Device::handle(const pollfd* fds, size_t n) {
    size_t i = 0;
    bool accept = false;
    if (listener_ && i < n) accept = fds[i++].revents & POLLIN;
    std::vector<Pending*> said;
    for (auto& p : pending_) {
        if (i >= n) return;
        if (fds[i++].revents) said.push_back(p.get());
    }
    for (const Key& key : polled_) {
        if (i >= n) break;
        short r = fds[i++].revents;
        auto it = conns_.find(key);
        if (!r || it == conns_.end() || it->second->dead) continue;
        Conn* c = it->second.get();
        if (r & POLLOUT) drain(*c);
        if (c->dead) continue;
        if (r & POLLIN) c->readable = true;
        if (r & (POLLHUP | POLLERR)) {
            if (!c->connected || c->peer_shut_rcv || c->host_eof) drop(*c, true);
            else c->hup = c->readable = true;
        }
    }
    for (Pending* p : said) read_connect(*p);  // after: they add streams
    if (accept) accept_clients();
}

}  // namespace husk::vsock
