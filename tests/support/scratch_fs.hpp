/**
 * @file scratch_fs.hpp
 * @brief Small private filesystems for tests: a full disk (a real `ENOSPC`) or a
 * filesystem of a given kind (ramfs: no `O_DIRECT`) without touching the disk the suite
 * runs on.
 *
 * `zbt::small_fs` makes a fresh directory `<parent>/zbt-small-fs-<pid>-<n>-<label>`,
 * mounts a size-limited tmpfs (or a ramfs) on it with mount(2), and unmounts and
 * removes it in its destructor, also when the test fails (a failed `REQUIRE` unwinds).
 * A run that is killed before that (SIGKILL, a crash) leaves its mount behind: the
 * first `small_fs` of the next run under the same parent unmounts (`MNT_DETACH`) and
 * removes every `zbt-small-fs-<pid>-…` whose process is gone
 * (`remove_stale_small_fs`).
 *
 * Mounting needs `CAP_SYS_ADMIN` (CI and this project's machines run the tests as
 * root). Where mount(2) is refused, `mounted()` is false, `why_not()` says why, and
 * `dir()` is an empty directory on the parent's filesystem: the test reports what it
 * did not check (doctest `MESSAGE`) and must not fill that directory. Setting
 * `ZB_TEST_NO_MOUNT=1` in the environment makes every `small_fs` behave so, to run
 * those paths as root.
 *
 * tmpfs supports `O_DIRECT` only from Linux 6.6: a swap tier on it sets
 * `swap_config::direct_io = false`. A tmpfs lives in memory, so sizes are capped at
 * `small_fs_max_bytes`; ramfs ignores the size (it never fills: not for `ENOSPC`).
 */
#pragma once

#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>

namespace zbt {

/// @brief Name prefix of the directories `small_fs` makes (followed by `<pid>-<n>-<label>`).
inline constexpr const char* small_fs_prefix = "zbt-small-fs-";

/// @brief The largest tmpfs `small_fs` mounts (it lives in memory): 64 MiB.
inline constexpr std::size_t small_fs_max_bytes = std::size_t{64} << 20;

namespace detail {

/// Whether `dir` is the root of a filesystem other than its parent's (a mount point).
inline bool is_mount_point(const std::filesystem::path& dir) {
  struct stat here {}, up {};
  if (::lstat(dir.c_str(), &here) != 0 || !S_ISDIR(here.st_mode)) return false;
  if (::stat((dir / "..").c_str(), &up) != 0) return false;
  return here.st_dev != up.st_dev;
}

/// Unmount whatever is mounted on `dir` (stacked mounts too; lazily if busy), then
/// remove it unless something is still mounted there. Returns whether `dir` is gone.
inline bool unmount_and_remove(const std::filesystem::path& dir) noexcept {
  int err = 0;
  for (int i = 0; i < 8 && is_mount_point(dir); ++i) {
    if (::umount2(dir.c_str(), 0) == 0) continue;
    if (::umount2(dir.c_str(), MNT_DETACH) == 0) continue;
    err = errno;
    break;
  }
  if (is_mount_point(dir)) {
    std::fprintf(stderr, "zbt::small_fs: cannot unmount %s (%s); left in place\n", dir.c_str(),
                 err ? std::strerror(err) : "still mounted");
    return false;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (ec) std::fprintf(stderr, "zbt::small_fs: cannot remove %s (%s)\n", dir.c_str(), ec.message().c_str());
  return !ec;
}

/// The pid in a `small_fs` directory name, or -1 if `name` is not one.
inline long small_fs_pid(const std::string& name) {
  const std::string prefix = small_fs_prefix;
  if (name.compare(0, prefix.size(), prefix) != 0) return -1;
  const char* digits = name.c_str() + prefix.size();
  char* end = nullptr;
  const long pid = std::strtol(digits, &end, 10);
  return end != digits && *end == '-' && pid > 0 ? pid : -1;
}

/// Whether process `pid` exists (EPERM: it does, someone else's).
inline bool process_alive(long pid) { return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM; }

}  // namespace detail

/// @brief Unmount and remove the `small_fs` directories under `parent` left by runs
/// whose process is gone (killed before their destructors ran). Returns how many were
/// removed; says each on stderr.
inline std::size_t remove_stale_small_fs(const std::filesystem::path& parent) {
  std::size_t removed = 0;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const long pid = detail::small_fs_pid(name);
    if (pid < 0 || detail::process_alive(pid)) continue;
    const bool was_mounted = detail::is_mount_point(it->path());
    if (detail::unmount_and_remove(it->path())) {
      ++removed;
      std::fprintf(stderr, "zbt::small_fs: removed stale %s%s (process %ld is gone)\n", it->path().c_str(),
                   was_mounted ? ", unmounted" : "", pid);
    }
  }
  return removed;
}

/**
 * @brief A directory with a small filesystem of its own mounted on it, for the length
 * of a test: `mount -t tmpfs -o size=<bytes> tmpfs <dir>` (or a ramfs), unmounted and
 * removed on destruction.
 *
 * ```cpp
 * zbt::small_fs small(root, "enospc", 8 << 20);  // 8 MiB tmpfs
 * if (!small.mounted()) { MESSAGE("not checked: " << small.why_not()); return; }
 * // fill small.dir() until ENOSPC
 * ```
 */
class small_fs {
public:
  /// @brief Make `<parent>/zbt-small-fs-<pid>-<n>-<label>` and mount a `type`
  /// filesystem ("tmpfs", of `bytes` rounded up to pages, at most `small_fs_max_bytes`;
  /// or "ramfs", which ignores `bytes`) on it. The first one under a `parent` in a
  /// process removes stale ones first. A refused mount is not an error: see `mounted()`.
  small_fs(const std::filesystem::path& parent, const std::string& label, std::size_t bytes,
           const std::string& type = "tmpfs") {
    if (type == "tmpfs" && (bytes == 0 || bytes > small_fs_max_bytes))  // size=0 means unlimited
      throw std::invalid_argument("zbt::small_fs: a tmpfs of " + std::to_string(bytes) +
                                  " bytes; give 1 to small_fs_max_bytes (64 MiB)");
    std::filesystem::create_directories(parent);
    clean_once(parent);
    static std::atomic<unsigned> sequence{0};
    dir_ = parent / (small_fs_prefix + std::to_string(::getpid()) + "-" + std::to_string(sequence.fetch_add(1)) +
                     "-" + label);
    // One of ours with this pid and number can only be left by a dead process whose pid
    // came round again.
    if (std::filesystem::exists(dir_)) detail::unmount_and_remove(dir_);
    std::filesystem::create_directory(dir_);
    const char* off = std::getenv("ZB_TEST_NO_MOUNT");
    if (off && *off && std::string(off) != "0") {
      why_not_ = "ZB_TEST_NO_MOUNT is set";
      return;
    }
    const std::string data = type == "tmpfs" ? "size=" + std::to_string(bytes) + ",mode=0700" : "mode=0700";
    if (::mount("zeroblocks-test", dir_.c_str(), type.c_str(), MS_NOSUID | MS_NODEV | MS_NOEXEC, data.c_str()) != 0) {
      const int err = errno;
      why_not_ = "mount -t " + type + " on " + dir_.string() + " failed: " + std::strerror(err) +
                 (err == EPERM ? " (needs root / CAP_SYS_ADMIN)" : "");
      return;
    }
    mounted_ = true;
  }
  small_fs(const small_fs&) = delete;
  small_fs& operator=(const small_fs&) = delete;
  /// @brief Unmount (lazily if something still holds it) and remove the directory.
  ~small_fs() { detail::unmount_and_remove(dir_); }

  /// @brief Whether the filesystem is mounted; if not, `dir()` is a plain empty
  /// directory on the parent's filesystem, which the test must not fill.
  bool mounted() const noexcept { return mounted_; }
  /// @brief Why it is not mounted ("" when it is).
  const std::string& why_not() const noexcept { return why_not_; }
  /// @brief The mount point.
  const std::filesystem::path& dir() const noexcept { return dir_; }
  /// @brief `dir()/name`, created.
  std::string sub(const std::string& name) const {
    std::filesystem::create_directories(dir_ / name);
    return (dir_ / name).string();
  }
  /// @brief Bytes an unprivileged writer can still allocate in `dir()`.
  std::size_t free_bytes() const {
    struct statvfs v {};
    if (::statvfs(dir_.c_str(), &v) != 0)
      throw std::system_error(errno, std::generic_category(), "zbt::small_fs: statvfs " + dir_.string());
    return static_cast<std::size_t>(v.f_bavail) * v.f_frsize;
  }
  /// @brief Regular files under `dir()`, at any depth.
  std::size_t files() const {
    std::size_t n = 0;
    for (auto& e : std::filesystem::recursive_directory_iterator(dir_)) n += e.is_regular_file();
    return n;
  }

private:
  static void clean_once(const std::filesystem::path& parent) {
    static std::mutex m;
    static std::set<std::string> done;
    const std::lock_guard<std::mutex> lock(m);
    if (done.insert(std::filesystem::weakly_canonical(parent).string()).second) remove_stale_small_fs(parent);
  }

  std::filesystem::path dir_;
  bool mounted_ = false;
  std::string why_not_;
};

}  // namespace zbt
