// husk: the runc CLI, flag for flag, over VM sandboxes.
#include <signal.h>

#include <iostream>

#include "cli/app.h"
#include "sys/sys.h"

int main(int argc, char** argv) {
    using namespace husk;
    sys::ensure_std_fds();  // a closed stdin reads as empty, never as our own fds
    // A shim or hook that goes away mid-write is an error to report, not a
    // reason to die. (Children get the default back: see sys::spawn.)
    signal(SIGPIPE, SIG_IGN);
    cli::AppState s;
    CLI::App app;
    cli::build_app(app, s);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    s.g.log.format = s.log_format == "json" ? log::Format::Json : log::Format::Text;
    log::init(s.g.log);
    if (!s.handler) {
        std::cout << app.help();
        return 0;
    }
    return s.handler();
}
