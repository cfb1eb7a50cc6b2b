// The manual pages (man/*.scd) held to the command line husk parses
// (cli/app.cpp): every subcommand has its page, every option is in it,
// and no page names an option its command does not have.
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <catch2/catch.hpp>

#include "cli/app.h"
#include "husk/config.h"
#include "husk/driver_choice.h"

namespace {

std::string page(const std::string& name) {
    std::ifstream f(std::string(HUSK_MAN_DIR) + "/" + name + ".scd");
    if (!f) return "";
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// "-b" and "--bundle" for every option of `app` and its subcommands.
void option_names(CLI::App& app, std::set<std::string>& out) {
    for (auto* o : app.get_options())
        for (const auto& n : husk::cli::option_flags(*o)) out.insert(n);
    for (auto* sub : app.get_subcommands([](CLI::App*) { return true; })) option_names(*sub, out);
}

// The options a page defines: the bold ones on a term line
// of its OPTIONS ("*-b*, *--bundle* _dir_"), not those prose mentions
// (ps's -ef).
std::set<std::string> defined_in(const std::string& text) {
    std::set<std::string> out;
    static const std::regex bold(R"(\*(--?[a-z0-9][a-z0-9-]*)\*)");
    std::istringstream lines(text);
    bool in_options = false;
    for (std::string l; std::getline(lines, l);) {
        if (l.rfind("# ", 0) == 0) in_options = l == "# OPTIONS";
        if (!in_options || l.rfind("*-", 0) != 0) continue;
        for (auto it = std::sregex_iterator(l.begin(), l.end(), bold); it != std::sregex_iterator(); ++it)
            out.insert((*it)[1]);
    }
    return out;
}

}  // namespace

TEST_CASE("every subcommand has a manual page that names each of its options, and no other") {
    husk::cli::AppState s;
    CLI::App app;
    husk::cli::build_app(app, s);
    std::set<std::string> global;
    for (auto* o : app.get_options())
        for (const auto& n : husk::cli::option_flags(*o)) global.insert(n);
    std::string main_page = page("husk.8");
    REQUIRE(!main_page.empty());
    for (const auto& g : global) {
        INFO("husk.8 lacks the global option " << g);
        CHECK(main_page.find("*" + g + "*") != std::string::npos);
    }
    auto subs = app.get_subcommands([](CLI::App*) { return true; });
    REQUIRE(subs.size() >= 19);
    CHECK(defined_in(page("husk-create.8")).count("--bundle"));  // the check below sees something
    for (auto* sub : subs) {
        std::string name = "husk-" + sub->get_name();
        std::string text = page(name + ".8");
        INFO(name << ".8.scd");
        REQUIRE(!text.empty());
        CHECK(text.rfind(name + "(8)", 0) == 0);
        CHECK(main_page.find("*" + name + "*(8)") != std::string::npos);  // husk(8) points at it
        std::set<std::string> own;
        option_names(*sub, own);
        for (const auto& o : own) {
            INFO("the page lacks " << o);
            CHECK(text.find("*" + o + "*") != std::string::npos);
        }
        for (const auto& o : defined_in(text)) {
            INFO("the page names " << o << ", which husk " << sub->get_name() << " does not take");
            CHECK((own.count(o) || global.count(o)));
        }
    }
}

TEST_CASE("husk-config(5) documents every key the config file takes") {
    std::string text = page("husk-config.5");
    REQUIRE(!text.empty());
    auto all = husk::parse_config("hypervisor = \"qemu\"\nshare = \"9p\"\ntemplates = true\n", "t");
    REQUIRE(all);
    for (const char* key : {"hypervisor", "share", "templates"}) {
        INFO(key);
        CHECK(text.find(std::string("*") + key + "* =") != std::string::npos);
    }
    // A key the page does not document is one the parser refuses.
    CHECK_FALSE(husk::parse_config("snapshots = true\n", "t"));
    // The example configuration parses, and sets nothing.
    std::ifstream f(std::string(HUSK_MAN_DIR) + "/../docs/config.toml");
    std::stringstream example;
    example << f.rdbuf();
    REQUIRE(!example.str().empty());
    auto c = husk::parse_config(example.str(), "docs/config.toml");
    REQUIRE(c);
    CHECK(c->hypervisor.empty());
    CHECK(c->share.empty());
    CHECK_FALSE(c->templates.has_value());
    // Uncommented, every line of it parses too.
    std::string uncommented = std::regex_replace(example.str(), std::regex("^#([a-z])", std::regex::multiline), "$1");
    auto u = husk::parse_config(uncommented, "docs/config.toml, uncommented");
    REQUIRE(u);
    CHECK(u->hypervisor == husk::kAutoDriver);
    CHECK(u->share == "virtiofs");
    CHECK(u->templates == std::optional<bool>(true));
}
