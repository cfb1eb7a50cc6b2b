#include "husk/vm_template.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <memory>

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include "husk/defaults.h"
#include "husk/paths.h"
#include "protocol/messages.h"
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
static std::string seal_path(const std::string& d, const std::string& key) { return d + "/" + key + ".seal"; }

std::string seal_to_json(const Seal& s) {
    return nlohmann::json{{"sha256", s.sha256}, {"bytes", s.bytes}, {"ino", s.ino}, {"ctime_ns", s.ctime_ns}}.dump() + "\n";
}

Result<Seal> seal_from_json(const std::string& text) {
    auto bad = [](const std::string& what) { return fail("template seal: " + what, EBADMSG); };
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_object()) return bad("not a JSON object");
    for (const auto& [k, v] : j.items())
        if (k != "sha256" && k != "bytes" && k != "ino" && k != "ctime_ns") return bad("unknown key " + k);
    for (const char* k : {"bytes", "ino", "ctime_ns"})
        if (!j.contains(k) || !j[k].is_number_unsigned()) return bad(std::string("missing or not a number: ") + k);
    if (!j.contains("sha256") || !j["sha256"].is_string()) return bad("missing or not a string: sha256");
    Seal s;
    s.sha256 = j["sha256"].get<std::string>();
    if (s.sha256.size() != 64 || !proto::from_hex(s.sha256)) return bad("sha256: not 64 hex digits");
    s.bytes = j["bytes"].get<uint64_t>();
    s.ino = j["ino"].get<uint64_t>();
    if (j["ctime_ns"].get<uint64_t>() > uint64_t(INT64_MAX)) return bad("ctime_ns out of range");
    s.ctime_ns = int64_t(j["ctime_ns"].get<uint64_t>());
    return s;
}

Result<std::string> sha256_of(int fd) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) return fail("sha256: no digest", ENOMEM);
    std::string buf(1 << 20, '\0');
    for (off_t off = 0;;) {
        ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno("read template");
        if (n == 0) break;
        if (EVP_DigestUpdate(ctx.get(), buf.data(), size_t(n)) != 1) return fail("sha256: update failed", EIO);
        off += n;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) return fail("sha256: final failed", EIO);
    return proto::to_hex(std::string(reinterpret_cast<char*>(md), len));
}

static int64_t ctime_ns(const struct stat& st) { return int64_t(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec; }

// Replace the seal whole: concurrent shims each write their own file and
// rename it over, so a reader sees one seal or another, never half.
static Result<void> write_seal(const std::string& d, const std::string& key, const Seal& s) {
    std::string tmp = seal_path(d, key) + "." + std::to_string(::getpid()) + "." + std::to_string(::gettid());
    {
        auto fd = TRY(sys::open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
        if (auto w = sys::write_all(fd.get(), seal_to_json(s)); !w) {
            ::unlink(tmp.c_str());
            return w;
        }
    }
    if (::rename(tmp.c_str(), seal_path(d, key).c_str()) < 0) {
        int e = errno;
        ::unlink(tmp.c_str());
        return fail_errno("rename " + tmp, e);
    }
    return {};
}

// The seal says these are the bytes saved: unchanged since they were last
// hashed, or hashed again now and the same (then recorded, so the next
// restore need not hash).
static Result<void> check_seal(const std::string& d, const std::string& key, int fd, long* hashed_ms) {
    if (hashed_ms) *hashed_ms = -1;
    auto text = sys::read_file(seal_path(d, key), 4096);
    if (!text) return fail("it has no seal (" + text.error().message + ")", EBADMSG);
    auto seal = TRY(seal_from_json(*text));
    struct stat st{};
    if (::fstat(fd, &st) < 0) return fail_errno("stat template");
    if (uint64_t(st.st_size) != seal.bytes)
        return fail("it holds " + std::to_string(st.st_size) + " bytes where " + std::to_string(seal.bytes) + " were saved",
                    EBADMSG);
    if (seal.ino == uint64_t(st.st_ino) && seal.ctime_ns == ctime_ns(st)) return {};
    auto t0 = std::chrono::steady_clock::now();
    auto sum = TRY(sha256_of(fd));
    if (hashed_ms)
        *hashed_ms = long(std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
    if (sum != seal.sha256) return fail("its bytes are not the ones saved (sha256 " + sum + ", sealed " + seal.sha256 + ")", EBADMSG);
    seal.ino = uint64_t(st.st_ino);
    seal.ctime_ns = ctime_ns(st);
    (void)write_seal(d, key, seal);  // (a failure only costs the next restore a hash)
    return {};
}

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
        // A use is recorded on the seal: the state's own times must not move.
        struct stat used{};
        if (::stat(seal_path(d, e.key).c_str(), &used) < 0) used = st;
        e.used = int64_t(used.st_mtim.tv_sec);
        e.used_ns = e.used * 1000000000 + used.st_mtim.tv_nsec;
        e.shape = sys::read_file(shape_path(d, e.key), 1 << 20).value_or("");
        out.push_back(std::move(e));
    }
    std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.used_ns > b.used_ns; });
    return out;
}

Result<std::optional<sys::Fd>> open_saved(const std::string& d, const std::string& shape, long* hashed_ms) {
    std::string key = key_of(shape);
    auto fd = sys::open(state_path(d, key), O_RDONLY);
    if (!fd) {
        if (fd.error().code == ENOENT) return std::optional<sys::Fd>();
        return tl::unexpected(fd.error().context("template"));
    }
    auto saved = sys::read_file(shape_path(d, key), 1 << 20);
    if (!saved || *saved != shape) return std::optional<sys::Fd>();
    if (auto ok = check_seal(d, key, fd->get(), hashed_ms); !ok) {
        remove(d, key);  // never restored: the next container of the shape makes it again
        return tl::unexpected(ok.error().context("dropped"));
    }
    // Used now: the last to go when the store is pruned.
    (void)::utimensat(AT_FDCWD, seal_path(d, key).c_str(), nullptr, 0);
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
    // Then its seal, which also decides between makers of one shape: the
    // one whose seal gets the name publishes its state (so a state is
    // never seen without its seal, nor with another maker's). What it
    // seals is the file as the maker's VMM left it: the VMM has let go of
    // it (its save is over), and restores get it read-only.
    Seal seal;
    seal.sha256 = TRY(sha256_of(fd));
    struct stat st{};
    if (::fstat(fd, &st) < 0) return fail_errno("stat template");
    seal.bytes = uint64_t(st.st_size);
    auto sealed = TRY(sys::open(d, O_TMPFILE | O_RDWR, 0600));
    TRY(sys::write_all(sealed.get(), seal_to_json(seal)));
    if (!TRY(link_as(sealed.get(), seal_path(d, key)))) {
        // Another maker's, or one a maker that died left (gone once it is
        // a minute old: then ours may take the name).
        prune(d, max_bytes);
        if (!TRY(link_as(sealed.get(), seal_path(d, key)))) return false;
    }
    if (!TRY(link_as(fd, state_path(d, key)))) return false;  // (never sealed: a reader drops it)
    // Named (which moved its ctime): from now on, unchanged means the same.
    if (::fstat(fd, &st) == 0) {
        seal.ino = uint64_t(st.st_ino);
        seal.ctime_ns = ctime_ns(st);
        (void)write_seal(d, key, seal);
    }
    prune(d, max_bytes, key);
    return true;
}

void remove(const std::string& d, const std::string& key) {
    ::unlink(state_path(d, key).c_str());
    ::unlink(shape_path(d, key).c_str());
    ::unlink(seal_path(d, key).c_str());
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
    // What a maker or a restore that died left: a shape or seal whose
    // state is gone, a seal half replaced (not one a maker is publishing
    // now: after a minute).
    for (const auto& n : sys::list_dir(d).value_or(std::vector<std::string>{})) {
        if (n.size() < 32 + 5 || n[32] != '.' || n.substr(0, 32) == keep) continue;
        std::string kind = n.substr(32);
        bool side = kind == ".shape" || kind == ".seal";
        bool half = kind.rfind(".seal.", 0) == 0;
        struct stat st;
        if (((side && !sys::exists(state_path(d, n.substr(0, 32)))) || half) && ::stat((d + "/" + n).c_str(), &st) == 0 &&
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
