// --preserve-fds: which way each fd crosses into the VM, and what is
// refused before anything starts (src/husk/preserved_fds.h).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "husk/preserved_fds.h"
#include "sys/sys.h"

using namespace husk;
using proto::Flow;

TEST_CASE("preserved fds: the access mode says which way, and what is not a stream is refused", "[preserve]") {
    CHECK(fd_flow(3, O_RDONLY, S_IFIFO, false) == Flow::In);
    CHECK(fd_flow(3, O_WRONLY | O_APPEND, S_IFREG, false) == Flow::Out);
    CHECK(fd_flow(3, O_RDWR, S_IFSOCK, false) == Flow::Both);
    CHECK(fd_flow(3, O_RDWR, S_IFCHR, false) == Flow::Both);
    auto listening = fd_flow(7, O_RDWR, S_IFSOCK, true);
    REQUIRE_FALSE(listening);
    CHECK(listening.error().message.find("fd 7 is a listening socket") != std::string::npos);
    auto dir = fd_flow(4, O_RDONLY | O_DIRECTORY, S_IFDIR, false);
    REQUIRE_FALSE(dir);
    CHECK(dir.error().message == "--preserve-fds: fd 4 is a directory: only a stream can be relayed into the VM");
    auto path = fd_flow(5, O_PATH, S_IFREG, false);
    REQUIRE_FALSE(path);
    CHECK(path.error().message.find("fd 5 is an O_PATH fd") != std::string::npos);
}

TEST_CASE("preserved fds: asked of real fds, named as the container sees them", "[preserve]") {
    auto [r, w] = sys::pipe(O_CLOEXEC).value();
    CHECK(fd_flow(r.get()) == Flow::In);
    CHECK(fd_flow(w.get()) == Flow::Out);
    auto [a, b] = sys::socketpair(SOCK_STREAM).value();
    CHECK(fd_flow(a.get()) == Flow::Both);

    sys::Fd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(l);
    REQUIRE(::listen(l.get(), 1) == 0);  // bound to an ephemeral port
    auto refused = fd_flow(l.get(), 9);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.rfind("--preserve-fds: fd 9 is a listening socket", 0) == 0);

    int closed = ::dup(r.get());
    ::close(closed);
    auto gone = fd_flow(closed, 6);
    REQUIRE_FALSE(gone);
    CHECK(gone.error().message.rfind("--preserve-fds: fd 6 is not open", 0) == 0);
}

TEST_CASE("preserved fds: a count is bounded by the stream id's fd bits", "[preserve]") {
    CHECK(kMaxPreservedFds == 253);
    CHECK(preserved_fd_flows(0).value().empty());
    auto many = preserved_fd_flows(kMaxPreservedFds + 1);
    REQUIRE_FALSE(many);
    CHECK(many.error().message == "--preserve-fds: at most 253 fds, got 254");
    CHECK_FALSE(preserved_fd_flows(-1));
    CHECK(preserved_fds(3) == std::vector<int>{3, 4, 5});
    // fds 3.. of this test process: whatever they are, each is judged on its own.
    auto [r, w] = sys::pipe(0).value();
    auto flows = preserved_fd_flows(1, r.get());
    REQUIRE(flows);
    CHECK(flows->at(0) == Flow::In);
}
