// A fresh directory under /tmp for one test case (the case removes it).
#pragma once
#include <stdlib.h>

#include <string>

#include <catch2/catch.hpp>

inline std::string make_tmpdir(const std::string& what = "unit") {
    std::string t = "/tmp/husk-" + what + "-XXXXXX";
    REQUIRE(::mkdtemp(t.data()));
    return t;
}
