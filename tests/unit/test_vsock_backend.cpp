// husk-vsock (hypervisors/husk-vsock/): the vhost-user messages, the split
// rings against a guest that breaks them, and the hybrid vsock streams
// both ways with their credit, against a pretend guest (vsock_guest.h).
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "sys/sys.h"
#include "tmpdir.h"
#include "vsock_guest.h"

// Inside the namespace, not `using` it: the unity build puts this file
// beside others that use husk's own Device.
namespace husk::vsock::testing {
namespace {

constexpr uint32_t kGuestPort = 1024;

Header from_guest(uint16_t op, uint32_t host_port, uint32_t guest_port = kGuestPort, uint32_t buf_alloc = 1 << 20, uint32_t fwd = 0) {
    Header h;
    h.src_cid = 3;
    h.dst_cid = kHostCid;
    h.src_port = guest_port;
    h.dst_port = host_port;
    h.op = op;
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd;
    return h;
}

// Run the device's loop a few times (poll with no wait).
void spin(Device& d, int rounds = 5) {
    for (int r = 0; r < rounds; ++r) {
        std::vector<pollfd> fds;
        d.poll_set(fds);
        if (!fds.empty()) REQUIRE(::poll(fds.data(), fds.size(), 20) >= 0);
        d.handle(fds.data(), fds.size());
        d.process();
    }
}

std::string read_some(int fd, size_t want) {
    std::string got;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (got.size() < want && std::chrono::steady_clock::now() < deadline) {
        char buf[4096];
        ssize_t n = ::read(fd, buf, std::min(sizeof buf, want - got.size()));
        if (n > 0) got.append(buf, size_t(n));
        else if (n == 0) break;
        else std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return got;
}

struct Setup {
    std::string dir = make_tmpdir("vsock");
    std::string uds = dir + "/vsock.sock";
    Guest g;
    std::unique_ptr<Device> dev;
    Setup() {
        REQUIRE(g.start());
        auto l = sys::unix_listen(uds, 4);
        REQUIRE(l);
        dev = std::make_unique<Device>(3, uds, std::move(*l), g);
    }
    ~Setup() { (void)sys::remove_all(dir); }

    // A host client through CONNECT, accepted by the guest: (client, host port).
    std::pair<sys::Fd, uint32_t> connect() {
        auto c = sys::unix_connect(uds);
        REQUIRE(c);
        REQUIRE(sys::write_all(c->get(), "CONNECT 1024\n"));
        g.post_rx(4);
        spin(*dev);
        auto got = g.received();
        REQUIRE(got.size() == 1);
        CHECK(got[0].first.op == kRequest);
        CHECK(got[0].first.src_cid == kHostCid);
        CHECK(got[0].first.dst_cid == 3);
        CHECK(got[0].first.dst_port == kGuestPort);
        uint32_t port = got[0].first.src_port;
        CHECK(port >= kFirstHostPort);
        g.send(from_guest(kResponse, port));
        spin(*dev);
        REQUIRE(sys::set_nonblock(c->get(), true));
        CHECK(read_some(c->get(), 3 + std::to_string(port).size() + 1) == "OK " + std::to_string(port) + "\n");
        return {std::move(*c), port};
    }
};

}  // namespace

TEST_CASE("husk-vsock: vhost-user negotiation and config") {
    Guest g(42);
    auto r = g.vu.handle(msg(kGetFeatures));
    REQUIRE(r);
    REQUIRE(*r);
    uint64_t f;
    std::memcpy(&f, (*r)->payload.data(), 8);
    CHECK(f == (kFeatureVersion1 | kFeatureProtocolFeatures));
    CHECK(((*r)->flags & kFlagReply));
    r = g.vu.handle(msg(kGetProtocolFeatures));
    REQUIRE((r && *r));
    std::memcpy(&f, (*r)->payload.data(), 8);
    CHECK((f & kProtocolConfig));
    // The guest's CID, from the device's config space (what QEMU asks at realize).
    r = g.vu.handle(msg(kGetConfig, le(uint32_t(0)) + le(uint32_t(8)) + le(uint32_t(0)) + std::string(8, '\0')));
    REQUIRE((r && *r));
    uint64_t cid;
    std::memcpy(&cid, (*r)->payload.data() + 12, 8);
    CHECK(cid == 42);
    REQUIRE(g.start());
    CHECK(g.vu.running(0));
    CHECK(g.vu.running(1));
    // With REPLY_ACK, a message that wants an answer gets a zero.
    Message m = msg(kSetOwner);
    m.flags |= kFlagNeedReply;
    r = g.vu.handle(std::move(m));
    REQUIRE((r && *r));
    CHECK((*r)->payload == le(uint64_t(0)));
}

TEST_CASE("husk-vsock: malformed vhost-user messages end the session") {
    Guest g;
    CHECK(!g.vu.handle(msg(kSetVringNum, le(uint32_t(2)) + le(uint32_t(16)))));   // no ring 2
    CHECK(!g.vu.handle(msg(kSetVringNum, le(uint32_t(0)) + le(uint32_t(100)))));  // not a power of two
    CHECK(!g.vu.handle(msg(kSetFeatures, le(uint64_t(1) << 28))));               // not offered
    CHECK(!g.vu.handle(msg(kSetMemTable, le(uint32_t(1)) + le(uint32_t(0)) + std::string(32, '\0'))));  // no fd
    CHECK(!g.vu.handle(msg(kGetConfig, le(uint32_t(4)) + le(uint32_t(8)) + le(uint32_t(0)) + std::string(8, '\0'))));  // past the config
    CHECK(!g.vu.handle(msg(99)));
    Message v2 = msg(kGetFeatures);
    v2.flags = 2;
    CHECK(!g.vu.handle(std::move(v2)));
    // Ring addresses outside the memory table.
    REQUIRE(g.start());
    CHECK(!g.vu.handle(msg(kSetVringAddr, le(uint32_t(0)) + le(uint32_t(0)) + le(uint64_t(16)) + le(uint64_t(32)) + le(uint64_t(64)) + le(uint64_t(0)))));
}

TEST_CASE("husk-vsock: a broken chain stops the ring, never reads outside guest memory") {
    auto broken_by = [](auto&& doit) {
        Guest g;
        REQUIRE(g.start());
        doit(g);
        auto c = g.tx->pop(*g.mem);
        CHECK(!c);
        CHECK(g.tx->broken());
        CHECK(!g.tx->ready());
        return c ? std::string() : c.error().message;
    };
    CHECK_THAT(broken_by([](Guest& g) {  // a chain that loops
                   g.set_desc(1, 0, kGpaBase + kBufArea, 44, 1, 1);
                   g.set_desc(1, 1, kGpaBase + kBufArea, 44, 1, 0);
                   g.make_available(1, 0);
               }),
               Catch::Contains("loops"));
    CHECK_THAT(broken_by([](Guest& g) {  // a buffer past the end of memory
                   g.set_desc(1, 0, kGpaBase + kMemSize - 8, 44, 0, 0);
                   g.make_available(1, 0);
               }),
               Catch::Contains("outside guest memory"));
    CHECK_THAT(broken_by([](Guest& g) {  // an address that wraps
                   g.set_desc(1, 0, ~uint64_t(0) - 4, 44, 0, 0);
                   g.make_available(1, 0);
               }),
               Catch::Contains("outside guest memory"));
    CHECK_THAT(broken_by([](Guest& g) {  // a head past the table
                   uint16_t head = 500;
                   std::memcpy(g.at(g.avail_off(1) + 4), &head, 2);
                   g.avail_idx[1] = 1;
                   std::memcpy(g.at(g.avail_off(1) + 2), &g.avail_idx[1], 2);
               }),
               Catch::Contains("outside the table"));
    CHECK_THAT(broken_by([](Guest& g) {  // an avail index far ahead
                   uint16_t idx = 1000;
                   std::memcpy(g.at(g.avail_off(1) + 2), &idx, 2);
               }),
               Catch::Contains("past a ring"));
    CHECK_THAT(broken_by([](Guest& g) {  // indirect, never negotiated
                   g.set_desc(1, 0, kGpaBase + kBufArea, 16, 4, 0);
                   g.make_available(1, 0);
               }),
               Catch::Contains("indirect"));
}

TEST_CASE("husk-vsock: a host client reaches the guest's port, data flows both ways") {
    Setup s;
    auto [c, port] = s.connect();
    // host -> guest
    REQUIRE(sys::write_all(c.get(), "hello guest"));
    spin(*s.dev);
    auto got = s.g.received();
    REQUIRE(got.size() == 1);
    CHECK(got[0].first.op == kRw);
    CHECK(got[0].second == "hello guest");
    CHECK(got[0].first.buf_alloc == kBufAlloc);
    // guest -> host
    s.g.send(from_guest(kRw, port), "hello host");
    spin(*s.dev);
    CHECK(read_some(c.get(), 10) == "hello host");
    CHECK(s.g.interrupts[0] > 0);
    CHECK(s.g.interrupts[1] > 0);
    // The host closes: the guest hears SHUTDOWN (no more sends), then its
    // own shutdown ends the stream with an RST.
    c.reset();
    s.g.post_rx(4);
    spin(*s.dev);
    got = s.g.received();
    REQUIRE(!got.empty());
    CHECK(got.back().first.op == kShutdown);
    CHECK((got.back().first.flags & kShutdownSend));
    s.g.send(from_guest(kShutdown, port), "");
    Header both = from_guest(kShutdown, port);
    both.flags = kShutdownRcv | kShutdownSend;
    s.g.send(both);
    spin(*s.dev);
    got = s.g.received();
    REQUIRE(!got.empty());
    CHECK(got.back().first.op == kRst);
    CHECK(s.dev->connections() == 0);
}

TEST_CASE("husk-vsock: streams live through a pause and through memory plugged in") {
    Setup s;
    s.g.vu.on_stop = [&] { s.dev->release_rx(); };
    auto [c, port] = s.connect();
    // An rx buffer the device holds (nothing to send yet) goes back to the
    // driver at the pause: the base read back does not count it.
    s.g.post_rx(2);
    spin(*s.dev);
    REQUIRE(s.g.pause_and_resume());
    uint16_t used;
    std::memcpy(&used, s.g.at(s.g.used_off(0) + 2), 2);
    CHECK(s.g.bases[0] == used);  // the held buffer is the driver's again
    REQUIRE(sys::write_all(c.get(), "after the pause"));
    spin(*s.dev);
    auto got = s.g.received();
    REQUIRE(got.size() == 1);
    CHECK(got[0].second == "after the pause");
    s.g.send(from_guest(kRw, port), "and back");
    spin(*s.dev);
    CHECK(read_some(c.get(), 8) == "and back");
    // Memory plugged in while it runs: the rings are found again in the
    // new table, and the stream goes on.
    REQUIRE(s.g.plug_memory());
    s.g.post_rx(2);
    REQUIRE(sys::write_all(c.get(), "after the plug"));
    spin(*s.dev);
    got = s.g.received();
    REQUIRE(got.size() == 1);
    CHECK(got[0].second == "after the plug");
    CHECK(s.dev->connections() == 1);
}

TEST_CASE("husk-vsock: the guest is sent no more than its credit") {
    Setup s;
    auto [c, port] = s.connect();
    // The guest said buf_alloc 1 MiB at RESPONSE; now it has room for 100.
    s.g.send(from_guest(kCreditUpdate, port, kGuestPort, 100, 0));
    spin(*s.dev);
    REQUIRE(sys::write_all(c.get(), std::string(300, 'x')));
    s.g.post_rx(8);
    spin(*s.dev);
    auto got = s.g.received();
    size_t bytes = 0;
    for (auto& [h, p] : got) bytes += p.size();
    CHECK(bytes == 100);
    // It reads them and says so: the rest comes.
    s.g.send(from_guest(kCreditUpdate, port, kGuestPort, 100, 100));
    spin(*s.dev);
    s.g.send(from_guest(kCreditUpdate, port, kGuestPort, 1000, 200));
    spin(*s.dev);
    got = s.g.received();
    bytes = 0;
    for (auto& [h, p] : got) bytes += p.size();
    CHECK(bytes == 200);
}

TEST_CASE("husk-vsock: a guest whose own buffer caps what it sends hears of credit in time") {
    // Newer Linux guests send no more than their own receive buffer in
    // flight when it is smaller than our room (256 KiB against our 1 MiB).
    // A stream that only flows guest -> host must still hear of credit:
    // by the time it has sent that much, an update is on its way.
    Setup s;
    auto [c, port] = s.connect();
    constexpr uint32_t kGuestBuf = 256 << 10;
    std::string chunk(8192, 'z');
    uint32_t sent = 0;
    std::string read;
    std::optional<uint32_t> heard;  // the fwd_cnt of the first credit update
    while (sent < kGuestBuf) {
        s.g.send(from_guest(kRw, port, kGuestPort, kGuestBuf, 0), chunk);
        sent += uint32_t(chunk.size());
        s.g.post_rx(1);
        spin(*s.dev, 1);
        read += read_some(c.get(), chunk.size());
        for (auto& [h, p] : s.g.received())
            if (h.op == kCreditUpdate && !heard) heard = h.fwd_cnt;
    }
    CHECK(read.size() == kGuestBuf);
    REQUIRE(heard);
    CHECK(*heard >= kGuestBuf / 2);
    CHECK(*heard <= kGuestBuf);
}

TEST_CASE("husk-vsock: a guest that sends past the room it was given loses the stream") {
    Setup s;
    auto [c, port] = s.connect();
    // Nobody reads the client end: what the socket does not take is held,
    // up to kBufAlloc; past that, RST.
    std::string chunk(8192, 'y');
    uint64_t sent = 0;
    bool reset = false;
    for (int i = 0; i < 200 && !reset; ++i) {
        s.g.send(from_guest(kRw, port), chunk);
        sent += chunk.size();
        spin(*s.dev, 1);
        for (auto& [h, p] : s.g.received()) reset = reset || h.op == kRst;
        s.g.post_rx(2);
    }
    CHECK(reset);
    CHECK(s.dev->connections() == 0);
    CHECK(sent > kBufAlloc);
}

TEST_CASE("husk-vsock: a guest that is owed replies and posts no rx buffers is not read further") {
    Setup s;
    // Packets for streams that do not exist: each is owed an RST, and
    // there is nowhere to put them. The replies held stay bounded: tx
    // waits once 1024 are owed.
    unsigned sent = 0;
    for (int round = 0; round < 400; ++round) {
        // As a driver does: no more in flight than the ring holds (8
        // packets of two descriptors).
        while (uint16_t(s.g.avail_idx[1] - s.g.tx_used()) < 8 && sent < 1600)
            s.g.send(from_guest(kRw, 9000 + sent / 8, sent % 8)), ++sent;
        spin(*s.dev, 1);
    }
    uint16_t stuck = s.g.tx_used();
    CHECK(stuck == 1024);
    // Room for replies: they go, and tx goes on by itself.
    unsigned rsts = 0;
    for (int i = 0; i < 400 && rsts < sent; ++i) {
        s.g.post_rx(16);
        spin(*s.dev, 1);
        for (auto& [h, p] : s.g.received()) rsts += h.op == kRst;
        while (uint16_t(s.g.avail_idx[1] - s.g.tx_used()) < 8 && sent < 1600)
            s.g.send(from_guest(kRw, 9000 + sent / 8, sent % 8)), ++sent;
    }
    CHECK(sent == 1600);
    CHECK(rsts == 1600);
    CHECK(s.g.tx_used() == 1600);
}

TEST_CASE("husk-vsock: guest-initiated streams reach <uds>_<port>, or are refused") {
    Setup s;
    s.g.post_rx(4);
    // Nothing listens on port 5000 yet: RST.
    s.g.send(from_guest(kRequest, 5000, 2000));
    spin(*s.dev);
    auto got = s.g.received();
    REQUIRE(got.size() == 1);
    CHECK(got[0].first.op == kRst);
    auto l = sys::unix_listen(s.uds + "_5000", 1);
    REQUIRE(l);
    s.g.send(from_guest(kRequest, 5000, 2001));
    spin(*s.dev);
    got = s.g.received();
    REQUIRE(got.size() == 1);
    CHECK(got[0].first.op == kResponse);
    CHECK(got[0].first.src_port == 5000);
    CHECK(got[0].first.dst_port == 2001);
    auto a = sys::accept(l->get());
    REQUIRE(a);
    s.g.send(from_guest(kRw, 5000, 2001), "from the guest");
    spin(*s.dev);
    CHECK(read_some(a->get(), 14) == "from the guest");
    // A packet for a stream that does not exist: RST.
    s.g.send(from_guest(kRw, 7777, 1));
    spin(*s.dev);
    got = s.g.received();
    REQUIRE(!got.empty());
    CHECK(got.back().first.op == kRst);
    CHECK(got.back().first.src_port == 7777);
}

TEST_CASE("husk-vsock: a client that does not say CONNECT is closed; a refused guest closes it too") {
    Setup s;
    auto bad = sys::unix_connect(s.uds);
    REQUIRE(bad);
    REQUIRE(sys::write_all(bad->get(), "HELLO 5\n"));
    spin(*s.dev);
    CHECK(read_some(bad->get(), 1).empty());  // EOF
    auto c = sys::unix_connect(s.uds);
    REQUIRE(c);
    REQUIRE(sys::write_all(c->get(), "CONNECT 1024\n"));
    s.g.post_rx(2);
    spin(*s.dev);
    auto got = s.g.received();
    REQUIRE(got.size() == 1);
    s.g.send(from_guest(kRst, got[0].first.src_port));
    spin(*s.dev);
    CHECK(read_some(c->get(), 1).empty());  // EOF: the dialer retries
    CHECK(s.dev->connections() == 0);
    CHECK(parse_connect("CONNECT 52") == 52u);
    CHECK(!parse_connect("CONNECT "));
    CHECK(!parse_connect("CONNECT 99999999999"));
    CHECK(!parse_connect("CONNECT -1"));
}

}  // namespace husk::vsock::testing
