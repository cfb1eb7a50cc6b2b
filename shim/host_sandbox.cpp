// The shim's host sandbox: the container's netns and taps, the shared
// directory and its binds, the terminal (shim.h).
#include "shim/shim.h"

namespace husk::shimd {

// Every Ethernet interface of the container's netns gets a tap of its own
// and tc redirects both ways between the two (Kata's "tcfilter"): no
// bridge, no extra hop, and the netns looks to its owner as before. A VMM
// that takes fds gets the taps open and they go with it; one that opens
// them by name finds them persistent, owned by the uid it runs as (ours,
// in its jail), and we delete them when it is gone.
Result<void> Shim::setup_network() {
    taps_persist_ = !hv_->capabilities().nic_fd;
    if (!spec_.has_namespace("network")) return {};  // loopback only, in the guest
    for (auto& i : TRY(sys::scan_interfaces())) {
        // One veth feeds one VM: a second container in the same netns (a
        // pod's) cannot have it too.
        if (sys::has_redirect(i.name))
            log::warn("network: " + i.name + " is carried by another VM in this namespace; this one gets loopback only");
        else
            nics_.push_back(std::move(i));
    }
    for (size_t i = 0; i < nics_.size(); ++i) {
        // Recorded first: whatever part of this exists gets undone.
        if (!state_.netns.empty()) {
            state_.net_links.push_back(nics_[i].name);
            TRY(write_state(paths_, state_));
        }
        // A free name: a pod sibling's taps are taken, even one made
        // between our look and our create (which is exclusive).
        std::string tap;
        sys::Fd fd;
        for (size_t k = tap_names_.size();; ++k) {
            tap = tap_name(k);
            if (if_nametoindex(tap.c_str())) continue;
            bool record = taps_persist_ && !state_.netns.empty();
            if (record) {
                state_.net_taps.push_back(tap);
                TRY(write_state(paths_, state_));
            }
            auto r = sys::create_tap(tap, nics_[i].mtu);
            if (r) {
                fd = std::move(*r);
                break;
            }
            if (record) {  // not ours: `delete` must leave it be
                state_.net_taps.pop_back();
                TRY(write_state(paths_, state_));
            }
            if (r.error().code != EBUSY || k >= 99) return tl::unexpected(r.error());
        }
        tap_names_.push_back(tap);
        if (taps_persist_) TRY(sys::persist_tap(fd.get(), ::geteuid()));
        else taps_.push_back(std::move(fd));
        TRY(sys::redirect_both_ways(nics_[i].name, tap));
        log::debug("network: " + nics_[i].name + " (" + nics_[i].mac + ", mtu " + std::to_string(nics_[i].mtu) +
                   ") <-> " + tap + (taps_persist_ ? " (by name)" : ""));
    }
    return {};
}

// Our redirects off the caller's links, and our persistent taps (the VMM
// is gone). Other taps go with their last fd; a netns we made goes with us.
void Shim::teardown_network() {
    taps_.clear();
    if (taps_persist_) sys::delete_taps(tap_names_);
    tap_names_.clear();
    std::vector<std::string> links;
    for (const auto& n : nics_) links.push_back(n.name);
    if (!links.empty()) sys::remove_redirects(links);
}

Result<void> Shim::build_shares() {
    plan_ = plan_shares(spec_, args_.bundle, [](const std::string& p) { return sys::is_dir(p); });
    TRY(sys::mkdir_p(paths_.shared, 0700));
    // A mount of its own, shared: what joins the sandbox later (a pod
    // member's rootfs) is bound under it here and reaches the VMM's jail,
    // whose copy is its slave (hypervisors/jail.cpp).
    TRY(sys::mount(paths_.shared, paths_.shared, "", MS_BIND));
    TRY(sys::mount("", paths_.shared, "", MS_SHARED));
    return bind_shares(plan_, nullptr);
}

// Bind each entry of `plan` under the share (recording each target in
// `made`, when given, as it is made), and find the submounts the agent
// must know of.
// `trees`: the entries' mount trees, detached where the caller saw them
// (a pod member's, sent by its relay), instead of their paths here.
Result<void> Shim::bind_shares(SharePlan& plan, std::vector<std::string>* made, std::vector<sys::Fd>* trees) {
    if (trees && trees->size() != plan.entries.size())
        return fail("expected " + std::to_string(plan.entries.size()) + " mount trees, got " + std::to_string(trees->size()), EINVAL);
    for (size_t i = 0; i < plan.entries.size(); ++i) {
        const auto& e = plan.entries[i];
        std::string what = i == 0 ? "rootfs" : "mount source";
        // Opened once: what is checked is what is bound.
        auto src = trees ? sys::detached_source(std::move((*trees)[i])) : sys::open_bind_source(e.host_path);
        if (!src && src.error().code == ENOENT) return fail(what + " " + e.host_path + " does not exist", ENOENT);
        if (!src) return fail(what + " " + e.host_path + ": " + src.error().message, src.error().code);
        if (src->directory != e.directory)
            return fail(what + " " + e.host_path + " changed while the container was being created", EBUSY);
        std::string target = paths_.shared + "/" + e.name;
        if (e.directory) {
            TRY(sys::mkdir_p(target, 0755));
        } else {
            TRY(sys::mkdir_p(sys::dirname(target), 0755));
            TRY(sys::write_file(target, "", 0644));
        }
        TRY_CTX(sys::bind_mount(*src, target, e.recursive, e.readonly, e.recursive_readonly), what + " " + e.host_path);
        if (made) made->push_back(target);
    }
    // A read-only rbind (not rro) leaves its submounts writable, as the
    // kernel's bind does: the agent needs to know where they are.
    plan.mount_submounts.assign(plan.mount_share.size(), {});
    std::string mountinfo;
    for (size_t i = 0; i < plan.mount_share.size(); ++i) {
        const std::string& name = plan.mount_share[i];
        auto e = std::find_if(plan.entries.begin(), plan.entries.end(), [&](const ShareEntry& x) { return x.name == name; });
        if (name.empty() || e == plan.entries.end() || !e->recursive || !e->readonly || e->recursive_readonly) continue;
        if (mountinfo.empty()) mountinfo = sys::read_file("/proc/self/mountinfo", 16 << 20).value_or("");
        plan.mount_submounts[i] = sys::mounts_under(mountinfo, paths_.shared + "/" + name);
    }
    return {};
}

// process.terminal: a host pty whose master goes to --console-socket, as
// runc's does. Its slave becomes our controlling terminal (we are a session
// leader), so the caller's resizes reach us as SIGWINCH; it is raw, so the
// guest's pty alone does echo, line editing and ^C.
Result<void> Shim::setup_terminal() {
    if (args_.console_socket.empty()) return fail("process.terminal is true but no --console-socket was given", EINVAL);
    auto pty = TRY(sys::open_pty());
    TRY(sys::take_relay_tty(pty.slave.get()));
    TRY(sys::set_nonblock(pty.slave.get(), true));
    TRY(sys::send_console(args_.console_socket, pty));
    // The caller's stdio is not the container's: let go of it, as runc's
    // init does, or a caller that reads `create`'s output to EOF
    // (containerd's runc shim) waits for as long as we live.
    auto null = TRY(sys::open("/dev/null", O_RDWR));
    for (int fd = 0; fd <= 2; ++fd)
        if (::dup2(null.get(), fd) < 0) return fail_errno("stdio to /dev/null");
    Proc& init = ses_.procs[0];
    init.tty = true;
    auto& in = init.in[proto::Stdin];
    in.own = TRY(sys::dup(pty.slave.get()));
    in.fd = in.own.get();
    init.out[1].own = TRY(sys::dup(pty.slave.get()));
    init.out[1].fd = init.out[1].own.get();
    init.out[1].chunk = 4096;
    init.out[2].eof = true;  // a terminal has no separate stderr
    tty_slave_ = std::move(pty.slave);
    return {};
}

}  // namespace husk::shimd
