#include <signal.h>

#include <catch2/catch.hpp>

#include "husk/signals.h"

using husk::parse_signal;

TEST_CASE("signal names and numbers", "[signals]") {
    CHECK(parse_signal("TERM").value() == SIGTERM);
    CHECK(parse_signal("SIGTERM").value() == SIGTERM);
    CHECK(parse_signal("sigkill").value() == SIGKILL);
    CHECK(parse_signal("9").value() == 9);
    CHECK(parse_signal("HUP").value() == SIGHUP);
    CHECK(parse_signal("SIGWINCH").value() == SIGWINCH);
    CHECK(parse_signal("RTMIN").value() == 34);
    CHECK(parse_signal("RTMIN+3").value() == 37);
    CHECK(parse_signal("SIGRTMAX-1").value() == 63);
    CHECK(parse_signal("64").value() == 64);
    CHECK(husk::signal_name(SIGTERM) == "SIGTERM");
}

TEST_CASE("bad signals are rejected with the input in the message", "[signals]") {
    for (const char* bad : {"", "0", "65", "-1", "1000", "NOPE", "SIG", "RTMIN+40", "RTMAX+1", "9x", "TERM "}) {
        INFO(bad);
        auto r = parse_signal(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().message == std::string("unknown signal \"") + bad + "\"");
    }
}
