#include "husk/vm_template.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "husk/defaults.h"
#include "husk/paths.h"
#include "sys/sys.h"

namespace husk::templates {

std::string dir() {
    if (const char* d = ::getenv("HUSK_TEMPLATE_DIR"); d && *d) return d;
    if (!rootless()) return "/var/cache/husk/templates";
    return user_dir("XDG_CACHE_HOME", ".cache") + "/husk/templates";
}

static Result<std::optional<bool>> on_off(const std::string& v, const std::string& origin) {
    if (v == "on" || v == "1" || v == "true") return std::optional<bool>(true);
    if (v == "off" || v == "0" || v == "false") return std::optional<bool>(false);
    return fail(origin + ": expected \"on\" or \"off\", got \"" + v + "\"", EINVAL);
}

Result<Choice> choose(const std::map<std::string, std::string>& annotations, std::optional<bool> config) {
    if (auto it = annotations.find(defaults::kAnnotationTemplate); it != annotations.end()) {
        bool on = *TRY(on_off(it->second, std::string("annotation ") + it->first));
        return Choice{on, on ? "" : std::string("annotation ") + it->first + "=" + it->second};
    }
    if (const char* e = ::getenv("HUSK_TEMPLATES"); e && *e) {
        bool on = *TRY(on_off(e, "HUSK_TEMPLATES"));
        return Choice{on, on ? "" : std::string("HUSK_TEMPLATES=") + e};
    }
    if (config && !*config) return Choice{false, "the config file's templates = false"};
    return Choice{true, ""};
}

static uint64_t fnv1a(const std::string& s, uint64_t h) {
    for (unsigned char c : s) {
        h ^= c;
        h *= 0x100000001b3ull;
    }
    return h;
}

std::string file_identity(const std::string& path) {
    std::string real = sys::realpath(path).value_or(path);
    struct stat st{};
    if (::stat(real.c_str(), &st) < 0) return real + " missing\n";
    return real + " " + std::to_string(st.st_ino) + " " + std::to_string(st.st_size) + " " +
           std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + "\n";
}

std::string vm_files_identity(const std::string& binary, const std::string& kernel, const std::string& initrd) {
    return file_identity(binary) + file_identity(kernel) + file_identity(initrd);
}

std::string mac(size_t index) {
    char buf[18];
    std::snprintf(buf, sizeof buf, "02:68:75:73:6b:%02x", unsigned(index & 0xff));  // 02 "husk"
    return buf;
}

std::string key_of(const std::string& shape) {
    static const char* d = "0123456789abcdef";
    std::string out;
    for (uint64_t h : {fnv1a(shape, 0xcbf29ce484222325ull), fnv1a(shape, 0x84222325cbf29ce4ull)})
        for (int i = 60; i >= 0; i -= 4) out.push_back(d[(h >> i) & 15]);
    return out;
}

static std::string state_path(const std::string& d, const std::string& key) { return d + "/" + key + ".state"; }
static std::string shape_path(const std::string& d, const std::string& key) { return d + "/" + key + ".shape"; }

std::vector<Entry> list(const std::string& d) {
    std::vector<Entry> out;
    for (const auto& n : sys::list_dir(d).value_or(std::vector<std::string>{})) {
        if (n.size() != 32 + 6 || n.compare(32, 6, ".state") != 0) continue;
        Entry e;
        e.key = n.substr(0, 32);
        e.state = d + "/" + n;
        struct stat st;
        if (::stat(e.state.c_str(), &st) < 0) continue;
        e.bytes = uint64_t(st.st_size);
        e.used = int64_t(st.st_mtim.tv_sec);
        e.used_ns = e.used * 1000000000 + st.st_mtim.tv_nsec;
        e.shape = sys::read_file(shape_path(d, e.key), 1 << 20).value_or("");
        out.push_back(std::move(e));
    }
    std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.used_ns > b.used_ns; });
    return out;
}

Result<std::optional<sys::Fd>> open_saved(const std::string& d, const std::string& shape) {
    std::string key = key_of(shape);
    auto fd = sys::open(state_path(d, key), O_RDONLY);
    if (!fd) {
        if (fd.error().code == ENOENT) return std::optional<sys::Fd>();
        return tl::unexpected(fd.error().context("template"));
    }
    auto saved = sys::read_file(shape_path(d, key), 1 << 20);
    if (!saved || *saved != shape) return std::optional<sys::Fd>();
    (void)::futimens(fd->get(), nullptr);  // used now: the last to go when the store is pruned
    return std::optional<sys::Fd>(std::move(*fd));
}

Result<sys::Fd> begin_save(const std::string& d) {
    TRY(sys::mkdir_p(d, 0700));
    return TRY_CTX(sys::open(d, O_TMPFILE | O_RDWR, 0600), "template file in " + d);
}

// An unnamed file's name, given at once: never half there.
static Result<bool> link_as(int fd, const std::string& path) {
    std::string self = "/proc/self/fd/" + std::to_string(fd);
    if (::linkat(AT_FDCWD, self.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW) == 0) return true;
    if (errno == EEXIST) return false;
    return fail_errno("link " + path);
}

Result<bool> publish(const std::string& d, const std::string& shape, int fd, uint64_t max_bytes) {
    std::string key = key_of(shape);
    if (::fsync(fd) < 0) return fail_errno("fsync template");
    // The shape first (the state without it is never used), then the state.
    auto text = TRY(sys::open(d, O_TMPFILE | O_RDWR, 0600));
    TRY(sys::write_all(text.get(), shape));
    if (::fsync(text.get()) < 0) return fail_errno("fsync template shape");
    if (!TRY(link_as(text.get(), shape_path(d, key)))) {
        auto other = sys::read_file(shape_path(d, key), 1 << 20).value_or("");
        if (other != shape) return false;  // a colliding key: leave theirs
    }
    if (!TRY(link_as(fd, state_path(d, key)))) return false;
    prune(d, max_bytes, key);
    return true;
}

void remove(const std::string& d, const std::string& key) {
    ::unlink(state_path(d, key).c_str());
    ::unlink(shape_path(d, key).c_str());
}

size_t prune(const std::string& d, uint64_t max_bytes, const std::string& keep) {
    auto all = list(d);
    uint64_t total = 0;
    for (const auto& e : all) total += e.bytes;
    size_t gone = 0;
    for (auto it = all.rbegin(); it != all.rend() && total > max_bytes; ++it) {
        if (it->key == keep) continue;
        remove(d, it->key);
        total -= it->bytes;
        ++gone;
    }
    // A shape whose state is gone (a maker that died between the two;
    // not one a maker is publishing now).
    for (const auto& n : sys::list_dir(d).value_or(std::vector<std::string>{})) {
        if (n.size() != 32 + 6 || n.compare(32, 6, ".shape") != 0 || n.substr(0, 32) == keep) continue;
        struct stat st;
        if (!sys::exists(state_path(d, n.substr(0, 32))) && ::stat((d + "/" + n).c_str(), &st) == 0 &&
            st.st_mtim.tv_sec < ::time(nullptr) - 60)
            ::unlink((d + "/" + n).c_str());
    }
    return gone;
}

Report report(bool driver_can, std::optional<bool> config) {
    Report r;
    r.dir = dir();
    auto c = choose({}, config);
    r.on = driver_can && c && c->on;
    r.why = !c ? c.error().message : !c->on ? c->why : !driver_can ? "the driver has none" : "";
    for (const auto& e : list(r.dir)) {
        ++r.count;
        r.bytes += e.bytes;
    }
    return r;
}

}  // namespace husk::templates
