// husk checkpoint / husk restore, in runc's CLI shape (podman's container
// checkpoint/restore call them). CRIU's options that make no difference
// to a VM, which takes its whole state, are accepted so callers work:
// established TCP connections, external unix sockets, a shell job, file
// locks and namespaces all go on as they were. What husk cannot do is
// refused (lazy pages, pre-dumps, page servers).
#include "cli/commands.h"

namespace husk::cli {

void add_create_flags(CLI::App& sub, CreateOptions& o);

namespace {

// The flags both commands share with runc's; `--work-path` is where runc
// leaves CRIU's log and statistics: husk writes the statistics (its own
// figures in CRIU's stats-dump/stats-restore, which podman reads) and no
// log (errors go to stderr and --log).
void add_criu_flags(CLI::App& sub, std::string& image_path, std::string& work_path) {
    sub.add_option("--image-path", image_path, "the checkpoint's directory (default: ./checkpoint)");
    sub.add_option("--work-path", work_path, "where stats-dump / stats-restore go (CRIU's figure files; default: the image)");
    for (const char* f : {"--tcp-established", "--ext-unix-sk", "--shell-job", "--file-locks", "--auto-dedup", "--tcp-skip-in-flight",
                          "--link-remap"})
        sub.add_flag(f)->description("accepted: the VM keeps all of its state");
    for (const char* f : {"--manage-cgroups-mode", "--empty-ns", "--lsm-profile", "--lsm-mount-context"})
        sub.add_option(f)->description("accepted: the VM keeps all of its state");
}

std::string image_dir(const std::string& image_path) { return image_path.empty() ? "checkpoint" : image_path; }

}  // namespace

void setup_checkpoint(CLI::App& sub, Globals& g, Handler& run) {
    struct Opts {
        std::string id, image_path, work_path, parent_path, page_server;
        bool leave_running = false, pre_dump = false, lazy_pages = false;
        int status_fd = -1;
    };
    auto o = std::make_shared<Opts>();
    sub.description("save a running container's VM to a directory (qemu driver, rootfs on a disk); it is deleted unless --leave-running");
    add_criu_flags(sub, o->image_path, o->work_path);
    sub.add_flag("--leave-running", o->leave_running, "keep the container running after the checkpoint");
    sub.add_flag("--pre-dump", o->pre_dump, "refused: husk saves the whole VM at once");
    sub.add_flag("--lazy-pages", o->lazy_pages, "refused: husk saves the whole VM at once");
    sub.add_option("--parent-path", o->parent_path, "refused: husk saves the whole VM at once");
    sub.add_option("--page-server", o->page_server, "refused: husk saves the whole VM at once");
    sub.add_option("--status-fd", o->status_fd, "accepted for compatibility");
    sub.add_option("id", o->id, "container id")->required();
    sub.callback([&g, &run, o] {
        run = [&g, o] {
            if (o->pre_dump || o->lazy_pages || !o->parent_path.empty() || !o->page_server.empty())
                return report("checkpoint", o->id,
                              Error{ENOTSUP, "--pre-dump, --lazy-pages, --parent-path and --page-server are CRIU's: husk saves the "
                                             "whole VM at once"});
            auto r = checkpoint_container(g, o->id, image_dir(o->image_path), o->work_path, o->leave_running);
            return r ? 0 : report("checkpoint", o->id, r.error());
        };
    });
}

void setup_restore(CLI::App& sub, Globals& g, Handler& run) {
    struct Opts {
        CreateOptions create;
        std::string id, image_path, work_path;
        bool detach = false, lazy_pages = false;
    };
    auto o = std::make_shared<Opts>();
    sub.description("start a container from a checkpoint (its VM loaded where it was saved), and wait for it unless --detach");
    add_create_flags(sub, o->create);
    add_criu_flags(sub, o->image_path, o->work_path);
    sub.add_flag("-d,--detach", o->detach, "return once it runs");
    sub.add_flag("--lazy-pages", o->lazy_pages, "refused: husk loads the whole VM at once");
    sub.add_flag("--no-subreaper")->description("accepted for compatibility");
    sub.add_option("id", o->id, "container id")->required();
    sub.callback([&g, &run, o] {
        run = [&g, o]() -> int {
            if (o->lazy_pages) return report("restore", o->id, Error{ENOTSUP, "--lazy-pages is CRIU's: husk loads the whole VM at once"});
            auto dir = absolute(image_dir(o->image_path));
            if (!dir) return report("restore", o->id, dir.error());
            CreateOptions co = o->create;
            co.restore_from = *dir;
            if (!o->work_path.empty()) {
                auto work = absolute(o->work_path);
                if (!work) return report("restore", o->id, work.error());
                co.restore_work = *work;
            }
            auto r = run_container(g, o->id, co, o->detach, false);
            if (!r) return report("restore", o->id, r.error());
            if (o->detach) return 0;
            exit_like(*r);
        };
    });
}

}  // namespace husk::cli
