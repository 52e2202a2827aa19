/**
 * @file checkpoint.hpp
 * @brief Sharded, atomic, verified checkpoints that load on any number of ranks and
 *        into any stage or tier: `checkpoint::save(eng, dir, opts)`,
 *        `checkpoint::load(eng, dir, name)`.
 *
 * Needs nlohmann-json (the manifest) and xxHash (XXH3 checksums): link
 * `zeroblocks::checkpoint`. The core library does not.
 *
 * ## Format (version 1)
 *
 * A checkpoint is a directory `<dir>/<name>/` with
 *  - `manifest.json`: `format` ("zeroblocks-checkpoint"), `format_version`, `library_version`,
 *    `name`, `world` (ranks that wrote it), `stage`, `param_type`, `policies` and every
 *    knob (`config`: the lines ranks agree on), `optimizer` (its name and `state_arrays`:
 *    1 + the rule's state arrays, AdamW 3), `registry` (each parameter's `name`, `shape`,
 *    `unit`, `group`, `describe`), `run` (`steps` applied, `skipped`, `lr`, `scaler`: the
 *    loss scaler's named state) and `files`;
 *  - `rank-NNNNN.bin`, one per rank that wrote it. Each `files` entry names its file,
 *    `bytes`, `xxh3` (XXH3-64 of the whole file, 16 hex digits), `block_bytes` and
 *    `blocks` (XXH3-64 of each block of that many bytes, so a mismatch is located), and
 *    `segments`: `[param, begin, count, offset]` — elements `[begin, begin + count)` of
 *    parameter `param` stored at byte `offset` as `state_arrays` consecutive runs of
 *    `count` little-endian fp32 values (array 0 the fp32 master, array k ≥ 1 the
 *    optimizer's state array k−1: AdamW's m, then v).
 * `<dir>/latest` holds the name of the newest complete checkpoint.
 *
 * The data is in parameter coordinates (no padding, no layout), so a checkpoint written
 * by N ranks loads on M ranks and into another stage or tier: each rank reads the parts
 * of the files that cover what it holds. Every rank writes 1/N of the parameters (stage
 * 0 too), in parallel.
 *
 * ## Atomicity
 *
 * `save` writes into `<dir>/.tmp-<name>-<token>/`, fsyncs every file, agrees that every
 * rank succeeded, writes and fsyncs the manifest, fsyncs the directory, renames it to
 * `<dir>/<name>` (replacing a same-named checkpoint that `latest` does not point to — an
 * interrupted save's; the latest one is never replaced), fsyncs `<dir>`, then replaces
 * `latest` by writing `latest.tmp` and renaming it over `latest`. A crash at any instant leaves the previous checkpoint and
 * `latest` intact; `.tmp-*` leftovers of interrupted saves are removed by the next
 * `save`. `keep_last` removes the oldest complete checkpoints beyond that many.
 *
 * ## Verified load
 *
 * Before any state changes: the manifest's format and version, the optimizer, the
 * registry (a checkpoint of another model names the first differing parameter), and
 * every file a rank reads — its size and its checksum, block by block — are checked on
 * every rank; any failure is an error on every rank naming the file (and the byte range
 * of a corrupt block), and the engine is unchanged. Then the values are loaded, the
 * 16-bit parameters rounded from the master, and the step count, learning rate and
 * loss-scaler state restored: a resumed run continues bit for bit.
 *
 * `export_safetensors` writes a checkpoint as one safetensors file (offline, streaming,
 * no MPI; the `zeroblocks-export` tool); `save_safetensors` does it from a running
 * engine, collectively.
 *
 * `import_safetensors` initialises an engine's parameters from a safetensors file
 * (memory-mapped; each rank reads what it holds).
 *
 * `async_saver` saves in the background: training is blocked only for a host snapshot.
 *
 * ## Reading each byte once
 *
 * `load` maps every rank file it needs and hashes it block by block through the mapping
 * (one read from disk), then copies the values from the mapping — the page cache — into
 * the master; nothing is staged in anonymous memory unless a rank's element range spans
 * several saved runs (a reshard), and then one segment at a time. Pages the kernel
 * drops meanwhile are read again. `save` starts the write-back of each piece as soon as
 * it is written (`sync_file_range`), so the final `fsync` waits for little.
 *
 * ## The NVMe tier
 *
 * A master on NVMe (`master::swapped`) is saved and loaded through its own one-record
 * buffer, a sub-group at a time, streamed to or from the checkpoint in pieces of
 * `chunk_numel`: memory stays one sub-group record plus one piece, whatever the model's
 * size. The tier's files are not copied as files (`copy_file_range`, reflinks): they hold
 * sub-group records of two slots, the checkpoint holds parameter runs in a layout any
 * rank count reads, and every byte is hashed on the way anyway.
 */
#pragma once

#include "../core/config.hpp"
#include "../core/error.hpp"
#include "../engine/engine.hpp"
#include "format.hpp"

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

ZB_NAMESPACE_BEGIN
namespace checkpoint {

/// @brief How `save` writes.
struct save_options {
  /// The checkpoint's directory name under `dir`; empty: `step-<steps>`.
  std::string name;
  /// Complete checkpoints kept under `dir` (the oldest, by step, are removed); 0 keeps all.
  int keep_last = 0;
  /// Values staged per write (fp32 elements per array): bounds the memory a save uses.
  std::size_t chunk_numel = std::size_t{1} << 22;
  /// Bytes per checksummed block (locates corruption on load).
  std::size_t block_bytes = std::size_t{64} << 20;
};

namespace detail {

namespace fs = std::filesystem;

/// fsync a path (file or directory); errors throw naming it.
inline void fsync_path(const fs::path& p, bool directory) {
  const int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  ZB_REQUIRE(fd >= 0, "checkpoint: cannot open ", p.string(), " to sync it: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  ZB_REQUIRE(rc == 0, "checkpoint: fsync of ", p.string(), " failed: ", std::strerror(err));
}

/// Write `bytes` at the end of `fd`, all of it (short writes retried; ENOSPC throws).
inline void write_all(int fd, const void* data, std::size_t bytes, const fs::path& p) {
  const char* c = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t w = ::write(fd, c, bytes);
    if (w < 0 && errno == EINTR) continue;
    ZB_REQUIRE(w > 0, "checkpoint: writing ", p.string(), " failed: ", w < 0 ? std::strerror(errno) : "no progress");
    c += w;
    bytes -= static_cast<std::size_t>(w);
  }
}

/// Read exactly `bytes` at `offset`.
inline void read_at(int fd, void* data, std::size_t bytes, std::uint64_t offset, const fs::path& p) {
  char* c = static_cast<char*>(data);
  while (bytes > 0) {
    const ssize_t r = ::pread(fd, c, bytes, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    ZB_REQUIRE(r > 0, "checkpoint: reading ", p.string(), " at byte ", offset, " failed: ",
               r < 0 ? std::strerror(errno) : "unexpected end of file");
    c += r;
    bytes -= static_cast<std::size_t>(r);
    offset += static_cast<std::uint64_t>(r);
  }
}

/// A file descriptor closed on scope exit.
struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

/// Write a small text file durably (write, fsync).
inline void write_text(const fs::path& p, const std::string& text) {
  fd_guard f{::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  ZB_REQUIRE(f.fd >= 0, "checkpoint: cannot create ", p.string(), ": ", std::strerror(errno));
  write_all(f.fd, text.data(), text.size(), p);
  ZB_REQUIRE(::fsync(f.fd) == 0, "checkpoint: fsync of ", p.string(), " failed: ", std::strerror(errno));
}

inline std::string read_text(const fs::path& p, const char* who = "checkpoint") {
  std::ifstream in(p, std::ios::binary);
  ZB_REQUIRE(in.good(), who, ": cannot read ", p.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Run `f` on every rank; the first rank's failure (if any) becomes the same error on
/// every rank. Collective on `comm`.
template <class Comm, class F>
void on_every_rank(Comm& comm, F&& f) {
  std::string problem;
  try {
    f();
  } catch (const std::exception& e) {
    problem = e.what();
    if (problem.empty()) problem = "unknown error";
  }
  comm.agree(problem.empty(), problem);
}

/// Rank 0's string on every rank. Collective.
template <class Comm>
std::string from_rank0(Comm& comm, const std::string& mine) {
  return comm.all_gather_strings(comm.rank() == 0 ? mine : std::string())[0];
}

/// XXH3-64 of a whole stream, and of each block of `block` bytes.
class block_hasher {
public:
  explicit block_hasher(std::size_t block) : block_(block ? block : 1) {
    whole_ = XXH3_createState();
    part_ = XXH3_createState();
    ZB_REQUIRE(whole_ && part_, "checkpoint: out of memory for a checksum state");
    XXH3_64bits_reset(whole_);
    XXH3_64bits_reset(part_);
  }
  block_hasher(const block_hasher&) = delete;
  block_hasher& operator=(const block_hasher&) = delete;
  ~block_hasher() {
    XXH3_freeState(whole_);
    XXH3_freeState(part_);
  }
  void update(const void* data, std::size_t n) {
    const char* c = static_cast<const char*>(data);
    XXH3_64bits_update(whole_, c, n);
    while (n > 0) {
      const std::size_t k = std::min(n, block_ - in_block_);
      XXH3_64bits_update(part_, c, k);
      in_block_ += k;
      c += k;
      n -= k;
      if (in_block_ == block_) close_block();
    }
  }
  /// The whole hash and the blocks' (the last one partial).
  std::pair<std::uint64_t, std::vector<std::uint64_t>> finish() {
    if (in_block_ > 0) close_block();
    return {XXH3_64bits_digest(whole_), blocks_};
  }

private:
  void close_block() {
    blocks_.push_back(XXH3_64bits_digest(part_));
    XXH3_64bits_reset(part_);
    in_block_ = 0;
  }
  std::size_t block_;
  std::size_t in_block_ = 0;
  XXH3_state_t* whole_ = nullptr;
  XXH3_state_t* part_ = nullptr;
  std::vector<std::uint64_t> blocks_;
};

/// Names of complete checkpoints under `dir` with their step, oldest first.
inline std::vector<std::pair<long, std::string>> complete_checkpoints(const fs::path& dir) {
  std::vector<std::pair<long, std::string>> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_directory() || e.path().filename().string().rfind(".tmp-", 0) == 0) continue;
    const auto m = e.path() / "manifest.json";
    if (!fs::exists(m)) continue;
    try {
      out.emplace_back(static_cast<long>(read_manifest(read_text(m), m.string(), "checkpoint").steps),
                       e.path().filename().string());
    } catch (const std::exception&) {
      // not ours, or unreadable: left alone
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// A read-only mapping of a whole file, unmapped on scope exit.
class mapped_file {
public:
  mapped_file() = default;
  mapped_file(int fd, std::size_t bytes, const fs::path& p, const char* who) : bytes_(bytes) {
    if (bytes == 0) return;
    at_ = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
    ZB_REQUIRE(at_ != MAP_FAILED, who, ": cannot map ", p.string(), ": ", std::strerror(errno));
    // No madvise: on this project's VM a plain mapping read fastest (2.3 GB/s against
    // 2.1-2.3 with MADV_SEQUENTIAL, MADV_WILLNEED or MADV_POPULATE_READ, 1.3-1.8 for
    // pread of 1 MiB pieces).
  }
  mapped_file(mapped_file&& o) noexcept : at_(std::exchange(o.at_, MAP_FAILED)), bytes_(o.bytes_) {}
  mapped_file& operator=(mapped_file&& o) noexcept {
    std::swap(at_, o.at_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  ~mapped_file() {
    if (at_ != MAP_FAILED) ::munmap(at_, bytes_);
  }
  const char* data() const { return at_ == MAP_FAILED ? nullptr : static_cast<const char*>(at_); }
  std::size_t size() const { return bytes_; }

private:
  void* at_ = MAP_FAILED;
  std::size_t bytes_ = 0;
};

/// Open a rank file (a manifest `files` entry) under `cdir` and check its size.
inline fd_guard open_rank_file(const fs::path& p, const manifest::rank_file& f, const char* who) {
  fd_guard fd{::open(p.c_str(), O_RDONLY | O_CLOEXEC)};
  ZB_REQUIRE(fd.fd >= 0, who, ": cannot open ", p.string(), ": ", std::strerror(errno));
  struct stat st {};
  ZB_REQUIRE(::fstat(fd.fd, &st) == 0, who, ": cannot stat ", p.string());
  ZB_REQUIRE(static_cast<std::uint64_t>(st.st_size) == f.bytes, who, ": ", p.string(), " has ", st.st_size,
             " bytes; the manifest says ", f.bytes, " (truncated or replaced)");
  return fd;
}

/// Check a rank file (a manifest `files` entry) under `cdir`: its size, then its
/// checksum block by block, read a block at a time (memory: one block).
inline void verify_file(const fs::path& cdir, const manifest::rank_file& f, const char* who) {
  const fs::path p = cdir / f.file;
  auto fd = open_rank_file(p, f, who);
  std::vector<char> buf;
  verify_blocks(p.string(), f, who, [&](std::uint64_t off, std::size_t n) {
    buf.resize(n);
    read_at(fd.fd, buf.data(), n, off, p);
    return buf.data();
  });
}

/// Check a rank file as `verify_file` does, reading it once through a mapping that is
/// returned: the load copies from the page cache instead of reading the file again.
inline mapped_file map_verified_file(const fs::path& cdir, const manifest::rank_file& f, const char* who) {
  const fs::path p = cdir / f.file;
  auto fd = open_rank_file(p, f, who);
  mapped_file m(fd.fd, static_cast<std::size_t>(f.bytes), p, who);
  verify_blocks(p.string(), f, who, [&](std::uint64_t off, std::size_t) { return m.data() + off; });
  return m;
}

/// Read a checkpoint's manifest file and check it (`read_manifest`).
inline manifest manifest_at(const fs::path& cdir, const char* who) {
  const fs::path p = cdir / "manifest.json";
  return read_manifest(read_text(p, who), p.string(), who);
}

}  // namespace detail

/// @brief The name `latest` points to under `dir` (empty when there is none).
inline std::string latest(const std::string& dir) {
  const auto p = detail::fs::path(dir) / "latest";
  if (!detail::fs::exists(p)) return {};
  std::string s = detail::read_text(p);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

namespace detail {

/// One run of a rank file: elements `[begin, begin + count)` of parameter `param`.
struct file_segment {
  std::size_t param = 0, begin = 0, count = 0;
};

/// The manifest without its `files`: what the engine is and where its run stands.
template <class Engine>
json manifest_of(const Engine& eng, const std::string& name) {
  const auto run = eng.get_run_state();
  json m;
  m["format"] = "zeroblocks-checkpoint";
  m["format_version"] = format_version;
  m["library_version"] = concat(ZB_VERSION_MAJOR, ".", ZB_VERSION_MINOR, ".", ZB_VERSION_PATCH);
  m["name"] = name;
  m["world"] = eng.world();
  m["stage"] = Engine::stage;
  m["param_type"] = dtype_name<typename Engine::param_type>();
  m["config"] = agreement_lines<typename Engine::param_type, typename Engine::space>(eng.get_config());
  m["optimizer"] = {{"name", Engine::optimizer_type::name}, {"state_arrays", Engine::state_arrays}};
  json reg = json::array();
  const auto& regd = eng.registry();
  for (std::size_t p = 0; p < regd.size(); ++p) {
    const auto& d = regd.params()[p];
    reg.push_back({{"name", d.name},
                   {"shape", d.shape},
                   {"unit", regd.units()[d.unit]},
                   {"group", d.group},
                   {"describe", eng.param_description(p)}});
  }
  m["registry"] = reg;
  json sc = json::object();
  for (const auto& [k, v] : run.scaler) sc[k] = v;
  m["run"] = {{"steps", run.steps}, {"skipped", run.skipped}, {"lr", run.lr}, {"scaler", sc}};
  return m;
}

/// Write a checkpoint collectively on `comm`: the temporary directory, this rank's
/// file (`read(i, array, from, out, n)` gives `n` values of segment `i`'s array from
/// element `from`), the agreement, rank 0's manifest and the renames that publish it.
/// `manifest` is rank 0's manifest without `files`.
template <class Comm, class Read>
void write_checkpoint(Comm& comm, const std::string& dir, const std::string& name, const save_options& opts,
                      const json& manifest, const std::vector<file_segment>& segs, int arrays, Read&& read) {
  const int rank = comm.rank();
  // Rank 0 prepares the temporary directory (removing leftovers of interrupted saves).
  std::string tmp_name;
  on_every_rank(comm, [&] {
    if (rank != 0) return;
    fs::create_directories(dir);
    ZB_REQUIRE(latest(dir) != name, "checkpoint::save: ", (fs::path(dir) / name).string(),
               " is the latest checkpoint; save under another name");
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
    std::random_device rd;
    tmp_name = concat(".tmp-", name, "-", hex64((std::uint64_t{rd()} << 32) ^ rd()));
    fs::create_directory(fs::path(dir) / tmp_name);
  });
  tmp_name = from_rank0(comm, tmp_name);
  const fs::path tmp = fs::path(dir) / tmp_name;

  // Every rank writes its file: its segments, each as `arrays` runs of fp32.
  json mine;
  on_every_rank(comm, [&] {
    const fs::path p = tmp / rank_file_name(rank);
    fd_guard f{::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)};
    ZB_REQUIRE(f.fd >= 0, "checkpoint::save: cannot create ", p.string(), ": ", std::strerror(errno));
    block_hasher h(opts.block_bytes);
    std::vector<float> buf;
    std::uint64_t offset = 0, written = 0;
    json jsegs = json::array();
    for (std::size_t i = 0; i < segs.size(); ++i) {
      const auto& s = segs[i];
      jsegs.push_back({s.param, s.begin, s.count, offset});
      for (int a = 0; a < arrays; ++a)
        for (std::size_t done = 0; done < s.count;) {
          const std::size_t n = std::min(opts.chunk_numel, s.count - done);
          buf.resize(n);
          read(i, a, done, buf.data(), n);
          write_all(f.fd, buf.data(), n * sizeof(float), p);
          h.update(buf.data(), n * sizeof(float));
          // Start writing this piece back now (not waiting): the disk works while the
          // next piece is produced, and the fsync below has little left to do.
          ::sync_file_range(f.fd, static_cast<off_t>(written), static_cast<off_t>(n * sizeof(float)),
                            SYNC_FILE_RANGE_WRITE);
          written += n * sizeof(float);
          done += n;
        }
      offset += static_cast<std::uint64_t>(s.count) * sizeof(float) * static_cast<std::uint64_t>(arrays);
    }
    ZB_REQUIRE(::fsync(f.fd) == 0, "checkpoint::save: fsync of ", p.string(), " failed: ", std::strerror(errno));
    auto [whole, blocks] = h.finish();
    json jb = json::array();
    for (auto b : blocks) jb.push_back(hex64(b));
    mine = {{"rank", rank},          {"file", rank_file_name(rank)}, {"bytes", offset},
            {"xxh3", hex64(whole)}, {"block_bytes", opts.block_bytes}, {"blocks", jb},
            {"segments", jsegs}};
  });
  const auto files = comm.all_gather_strings(mine.dump());

  // Rank 0: the manifest, then the renames that publish it.
  on_every_rank(comm, [&] {
    if (rank != 0) return;
    json m = manifest;
    json fl = json::array();
    for (const auto& f : files) fl.push_back(json::parse(f));
    m["files"] = fl;
    write_text(tmp / "manifest.json", m.dump(1));
    fsync_path(tmp, true);
    // A checkpoint of that name that `latest` does not point to (an interrupted save
    // renamed it but never published it, or an older run's) is replaced.
    if (fs::exists(fs::path(dir) / name)) fs::remove_all(fs::path(dir) / name);
    fs::rename(tmp, fs::path(dir) / name);
    fsync_path(dir, true);
    write_text(fs::path(dir) / "latest.tmp", name + "\n");
    fs::rename(fs::path(dir) / "latest.tmp", fs::path(dir) / "latest");
    fsync_path(dir, true);
    if (opts.keep_last > 0) {
      auto all = complete_checkpoints(dir);
      for (std::size_t i = 0; i + static_cast<std::size_t>(opts.keep_last) < all.size(); ++i)
        if (all[i].second != name) fs::remove_all(fs::path(dir) / all[i].second);
    }
  });
}

/// Checks before a save: between steps, a usable name, sane options. Collective.
template <class Engine>
std::string check_save(Engine& eng, const save_options& opts) {
  const std::string name = opts.name.empty() ? concat("step-", eng.steps()) : opts.name;
  on_every_rank(eng.communicator(), [&] {
    ZB_REQUIRE(eng.micro_steps_pending() == 0, "checkpoint::save: ", eng.micro_steps_pending(),
               " micro-step(s) of the next step already ran; save between steps (after step())");
    ZB_REQUIRE(!name.empty() && name.find('/') == std::string::npos && name[0] != '.' && name != "latest",
               "checkpoint::save: bad name '", name, "' (no '/', no leading '.', not 'latest')");
    ZB_REQUIRE(opts.chunk_numel >= 1 && opts.block_bytes >= 1,
               "checkpoint::save: chunk_numel and block_bytes must be >= 1");
  });
  // The name and keep_last must agree (rank 0 publishes; chunk and block sizes are each
  // rank's own): a difference is an error on every rank.
  const auto all = eng.communicator().all_gather_strings(concat(name, '\n', opts.keep_last));
  for (std::size_t r = 1; r < all.size(); ++r)
    ZB_REQUIRE(all[r] == all[0], "checkpoint::save: rank 0 saves as '", all[0].substr(0, all[0].find('\n')),
               "' (keep_last ", all[0].substr(all[0].find('\n') + 1), ") but rank ", r, " as '",
               all[r].substr(0, all[r].find('\n')), "' (keep_last ", all[r].substr(all[r].find('\n') + 1),
               "): every rank saves alike");
  return name;
}

template <class Engine>
std::vector<file_segment> file_segments(const std::vector<typename Engine::state_segment>& segs) {
  std::vector<file_segment> out;
  out.reserve(segs.size());
  for (const auto& s : segs) out.push_back({s.param, s.begin, s.count});
  return out;
}

}  // namespace detail

/// @brief Save `eng`'s training state under `dir` (see the file comment). Collective;
/// between steps only (an open micro-step is an error on every rank). Returns the
/// checkpoint's name. Every rank must see `dir` (a shared filesystem for several nodes).
template <class Engine>
std::string save(Engine& eng, const std::string& dir, const save_options& opts = {}) {
  const std::string name = detail::check_save(eng, opts);
  const auto segs = eng.save_segments();
  detail::write_checkpoint(eng.communicator(), dir, name, opts, detail::manifest_of(eng, name),
                           detail::file_segments<Engine>(segs), Engine::state_arrays,
                           [&](std::size_t i, int a, std::size_t from, float* out, std::size_t n) {
                             eng.read_state(a, segs[i].master_offset + from, out, n);
                           });
  return name;
}

/// @brief Saves in the background. `save(dir, opts)` takes a snapshot of this rank's
/// part of the state in host memory (the only time training is blocked: one copy of
/// 4 (1 + K) B per element of 1/N of the model, into a buffer the saver keeps for the
/// next save) and returns; a thread writes it and
/// publishes the checkpoint exactly as `checkpoint::save` does, on a communicator of
/// its own (`comm.dup()` at construction), while training goes on. A second `save`
/// waits for the first; a failure of the background write (on any rank) is thrown by
/// the next `save`, `wait` or `error_pending` check — on every rank. The background
/// collectives need a communicator that progresses concurrently (`async_progress()`:
/// comm::mpi under MPI_THREAD_MULTIPLE); otherwise `save` writes synchronously.
/// Destroying the saver waits for the write in flight.
template <class Engine>
class async_saver {
public:
  explicit async_saver(Engine& eng) : eng_(eng), comm_(eng.communicator().dup()) {}
  async_saver(const async_saver&) = delete;
  async_saver& operator=(const async_saver&) = delete;
  ~async_saver() {
    if (thread_.joinable()) thread_.join();
  }

  /// @brief Snapshot now, write in the background. Collective, between steps. Returns
  /// the checkpoint's name.
  std::string save(const std::string& dir, const save_options& opts = {}) {
    wait();
    const std::string name = detail::check_save(eng_, opts);
    const auto segs = eng_.save_segments();
    // The snapshot: every segment's arrays, one after another.
    std::vector<std::size_t> at(segs.size() + 1, 0);
    for (std::size_t i = 0; i < segs.size(); ++i) at[i + 1] = at[i] + segs[i].count * Engine::state_arrays;
    // Kept between saves (the thread that read it has been joined): no page faults and
    // no zero-fill of a fresh buffer while training waits.
    if (!snap_ || snap_->size() != at.back()) snap_ = std::make_shared<std::vector<float>>(at.back());
    auto snap = snap_;
    for (std::size_t i = 0; i < segs.size(); ++i)
      for (int a = 0; a < Engine::state_arrays; ++a)
        eng_.read_state(a, segs[i].master_offset, snap->data() + at[i] + a * segs[i].count, segs[i].count);
    auto manifest = std::make_shared<detail::json>(detail::manifest_of(eng_, name));
    auto fsegs = std::make_shared<std::vector<detail::file_segment>>(detail::file_segments<Engine>(segs));
    auto job = [this, dir, name, opts, snap, manifest, fsegs, at] {
      detail::write_checkpoint(comm_, dir, name, opts, *manifest, *fsegs, Engine::state_arrays,
                               [&](std::size_t i, int a, std::size_t from, float* out, std::size_t n) {
                                 std::memcpy(out, snap->data() + at[i] + a * (*fsegs)[i].count + from,
                                             n * sizeof(float));
                               });
    };
    if (!concurrent()) {
      job();  // no concurrent progress: synchronous
      return name;
    }
    thread_ = std::thread([this, job] {
      try {
        job();
      } catch (...) {
        error_ = std::current_exception();
      }
    });
    return name;
  }
  /// @brief Wait for the write in flight; rethrow its failure (the same on every rank).
  void wait() {
    if (thread_.joinable()) thread_.join();
    if (error_) {
      auto e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }
  /// @brief Whether a write is in flight.
  bool busy() const { return thread_.joinable(); }
  /// @brief Whether saves run in the background: the communicator progresses from two
  /// threads (`async_progress()`), or has no peers to wait for (one without it, such
  /// as `comm::self`, whose collectives are local).
  bool concurrent() const {
    if constexpr (requires { comm_.async_progress(); }) return comm_.async_progress();
    else return true;
  }

private:
  Engine& eng_;
  typename Engine::comm_type comm_;
  std::shared_ptr<std::vector<float>> snap_;  // the host snapshot, reused by the next save
  std::thread thread_;
  std::exception_ptr error_;
};

/// @brief Load checkpoint `name` (default: `latest`) from `dir` into `eng`, which may
/// have another number of ranks, stage or tier than the run that saved it (same
/// registry and optimizer). Collective; between steps. Everything is verified before
/// the engine changes (see the file comment).
template <class Engine>
void load(Engine& eng, const std::string& dir, std::string name = {}) {
  namespace fs = detail::fs;
  using detail::json;
  auto& comm = eng.communicator();
  // Rank 0 reads the manifest; every rank checks it.
  std::string text;
  detail::on_every_rank(comm, [&] {
    if (comm.rank() != 0) return;
    if (name.empty()) {
      name = latest(dir);
      ZB_REQUIRE(!name.empty(), "checkpoint::load: no checkpoint in ", dir, " (no 'latest')");
    }
    text = detail::read_text(fs::path(dir) / name / "manifest.json", "checkpoint::load");
  });
  text = detail::from_rank0(comm, text);
  name = detail::from_rank0(comm, name);
  const fs::path cdir = fs::path(dir) / name;
  const auto where = (cdir / "manifest.json").string();
  manifest m;
  std::map<std::size_t, std::vector<std::array<std::uint64_t, 4>>> by_param;  // param -> {begin, count, file, offset}
  detail::on_every_rank(comm, [&] {
    ZB_REQUIRE(eng.micro_steps_pending() == 0, "checkpoint::load: load between steps (after step())");
    m = read_manifest(text, where, "checkpoint::load");
    ZB_REQUIRE(m.optimizer == Engine::optimizer_type::name && m.state_arrays == Engine::state_arrays,
               "checkpoint::load: ", where, " holds the state of optimizer '", m.optimizer, "' (", m.state_arrays,
               " arrays); this engine runs '", Engine::optimizer_type::name, "' (", Engine::state_arrays, ")");
    const std::size_t np = eng.model_layout().param_count();
    for (std::size_t p = 0; p < std::max<std::size_t>(np, m.registry.size()); ++p) {
      const std::string here = p < np ? eng.param_description(p) : "<nothing>";
      const std::string there = p < m.registry.size() ? m.registry[p].describe : "<nothing>";
      ZB_REQUIRE(here == there, "checkpoint::load: ", where, " is of another model: parameter #", p, " is ", there,
                 " in the checkpoint but ", here, " in this engine");
      ZB_REQUIRE(m.registry[p].numel == eng.model_layout().param(p).numel, "checkpoint::load: ", where,
                 ": parameter #", p, " ", here, " has ", m.registry[p].numel, " elements in the checkpoint but ",
                 eng.model_layout().param(p).numel, " in this engine");
    }
    // read_manifest checked each segment against its file and the checkpoint's
    // parameter, which is this engine's (same description and size).
    for (std::size_t fi = 0; fi < m.files.size(); ++fi)
      for (const auto& s : m.files[fi].segments) by_param[s.param].push_back({s.begin, s.count, fi, s.offset});
  });
  const auto& files = m.files;

  // The files this rank reads: each checked whole (size, then checksum block by block).
  const auto segments = eng.load_segments();
  std::vector<char> needed(files.size(), 0);
  std::vector<detail::mapped_file> maps(files.size());
  for (const auto& s : segments)
    for (const auto& c : by_param[s.param])
      if (c[0] < s.begin + s.count && s.begin < c[0] + c[1]) needed[c[2]] = 1;
  detail::on_every_rank(comm, [&] {
    for (const auto& s : segments) {  // every element this rank holds is in the checkpoint
      std::size_t covered = 0;
      for (const auto& c : by_param[s.param]) {
        const std::uint64_t lo = std::max<std::uint64_t>(s.begin, c[0]);
        const std::uint64_t hi = std::min<std::uint64_t>(s.begin + s.count, c[0] + c[1]);
        if (hi > lo) covered += hi - lo;
      }
      ZB_REQUIRE(covered == s.count, "checkpoint::load: ", where, " covers ", covered,
                 " of the ", s.count, " elements [", s.begin, ", ", s.begin + s.count, ") of parameter ",
                 eng.param_description(s.param));
    }
    // Each file is read once: through a mapping, hashed block by block; the load then
    // copies from the mapping (the page cache) instead of reading the file again.
    for (std::size_t fi = 0; fi < files.size(); ++fi)
      if (needed[fi]) maps[fi] = detail::map_verified_file(cdir, files[fi], "checkpoint::load");
  });

  // Verified: load. Every byte is now in a verified mapping, so nothing here reads the
  // disk again unless the page cache dropped pages meanwhile; a tier's write error
  // (the NVMe master) is still possible, reported on every rank, and leaves the engine
  // partly loaded — load again.
  detail::on_every_rank(comm, [&] {
    std::unique_ptr<float[]> staged;  // for a segment that spans several saved runs
    std::size_t staged_numel = 0;
    std::vector<const float*> ptrs(Engine::state_arrays);
    for (const auto& s : segments) {
      const std::array<std::uint64_t, 4>* whole = nullptr;  // one saved run covers it all
      for (const auto& c : by_param[s.param])
        if (c[0] <= s.begin && s.begin + s.count <= c[0] + c[1]) whole = &c;
      auto at = [&](const std::array<std::uint64_t, 4>& c, int a, std::uint64_t from) {
        return reinterpret_cast<const float*>(maps[c[2]].data() + c[3] +
                                              (static_cast<std::uint64_t>(a) * c[1] + (from - c[0])) * sizeof(float));
      };
      if (whole) {
        for (int a = 0; a < Engine::state_arrays; ++a) ptrs[a] = at(*whole, a, s.begin);
      } else {
        const std::size_t need = s.count * static_cast<std::size_t>(Engine::state_arrays);
        if (staged_numel < need) staged.reset(new float[staged_numel = need]);
        for (int a = 0; a < Engine::state_arrays; ++a) ptrs[a] = staged.get() + static_cast<std::size_t>(a) * s.count;
        for (const auto& c : by_param[s.param]) {
          const std::uint64_t a0 = std::max<std::uint64_t>(s.begin, c[0]),
                              a1 = std::min<std::uint64_t>(s.begin + s.count, c[0] + c[1]);
          if (a0 >= a1) continue;
          for (int a = 0; a < Engine::state_arrays; ++a)
            std::memcpy(staged.get() + static_cast<std::size_t>(a) * s.count + (a0 - s.begin), at(c, a, a0),
                        (a1 - a0) * sizeof(float));
        }
      }
      eng.load_segment(s, ptrs.data());
    }
  });
  eng.state_loaded();
  typename Engine::run_state rs;
  rs.steps = static_cast<long>(m.steps);
  rs.skipped = m.skipped;
  rs.lr = static_cast<float>(m.lr);
  rs.scaler = m.scaler;
  detail::on_every_rank(comm, [&] { eng.set_run_state(rs); });
}

/// @brief How `export_safetensors` writes.
struct export_options {
  /// The parameters' dtype in the file: "fp32", "bf16" or "fp16" (rounded from the
  /// fp32 master to nearest even, as the engine rounds its 16-bit parameters).
  std::string dtype = "fp32";
  /// Also write the optimizer's state arrays (fp32), as `optimizer.<name>.<k>`
  /// (`k` = the rule's state array: AdamW 0 = exp_avg, 1 = exp_avg_sq).
  bool optimizer_state = false;
  /// fp32 values staged at a time: memory stays about this many × 6 B whatever Ψ.
  std::size_t chunk_numel = std::size_t{1} << 22;
};

/// @brief Write checkpoint `name` (default: `latest`) of `dir` as one safetensors file
/// `out` (written to `out.tmp`, then renamed): the model's parameters by their
/// registered names and shapes, streamed with memory bounded by `chunk_numel` whatever
/// the model's size. No MPI, no engine: any process that can read the files. The rank
/// files are verified (sizes, checksums) first. The header's `__metadata__` carries
/// `format` ("zeroblocks"), `checkpoint`, `steps` and `optimizer`.
inline void export_safetensors(const std::string& dir, std::string name, const std::string& out,
                               const export_options& o = {}) {
  namespace fs = detail::fs;
  using ojson = nlohmann::ordered_json;
  if (name.empty()) name = latest(dir);
  ZB_REQUIRE(!name.empty(), "checkpoint::export_safetensors: no checkpoint in ", dir, " (no 'latest')");
  ZB_REQUIRE(o.dtype == "fp32" || o.dtype == "bf16" || o.dtype == "fp16", "checkpoint::export_safetensors: dtype '",
             o.dtype, "' is not fp32, bf16 or fp16");
  ZB_REQUIRE(o.chunk_numel >= 1, "checkpoint::export_safetensors: chunk_numel must be >= 1");
  const fs::path cdir = fs::path(dir) / name;
  const auto m = detail::manifest_at(cdir, "checkpoint::export_safetensors");
  const auto& files = m.files;
  for (const auto& f : files) detail::verify_file(cdir, f, "checkpoint::export_safetensors");
  const int arrays = m.state_arrays;
  const auto& reg = m.registry;
  // Where each parameter's elements are: {begin, count, file, offset}, by begin.
  std::vector<std::vector<std::array<std::uint64_t, 4>>> where(reg.size());
  for (std::size_t fi = 0; fi < files.size(); ++fi)
    for (const auto& s : files[fi].segments) where[s.param].push_back({s.begin, s.count, fi, s.offset});
  for (auto& w : where) std::sort(w.begin(), w.end());

  const std::size_t psize = o.dtype == "fp32" ? 4 : 2;
  const char* pdtype = o.dtype == "fp32" ? "F32" : o.dtype == "bf16" ? "BF16" : "F16";
  struct tensor {
    std::size_t param;
    int array;  // 0: the parameter (master, in `dtype`); k >= 1: optimizer state k-1 (fp32)
  };
  std::vector<tensor> order;
  for (std::size_t p = 0; p < reg.size(); ++p) order.push_back({p, 0});
  if (o.optimizer_state)
    for (int a = 1; a < arrays; ++a)
      for (std::size_t p = 0; p < reg.size(); ++p) order.push_back({p, a});
  ojson header;
  header["__metadata__"] = {{"format", "zeroblocks"},
                            {"checkpoint", name},
                            {"steps", std::to_string(m.steps)},
                            {"optimizer", m.optimizer}};
  std::uint64_t at = 0;
  for (const auto& t : order) {
    const auto& r = reg[t.param];
    const std::uint64_t bytes = r.numel * (t.array == 0 ? psize : 4);
    const std::string key = t.array == 0 ? r.name : detail::concat("optimizer.", r.name, ".", t.array - 1);
    ZB_REQUIRE(!header.contains(key), "checkpoint::export_safetensors: two tensors named '", key, "'");
    header[key] = {{"dtype", t.array == 0 ? pdtype : "F32"}, {"shape", r.shape}, {"data_offsets", {at, at + bytes}}};
    at += bytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');  // the data starts 8-byte aligned

  const fs::path tmp = out + ".tmp";
  detail::fd_guard w{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)};
  ZB_REQUIRE(w.fd >= 0, "checkpoint::export_safetensors: cannot create ", tmp.string(), ": ", std::strerror(errno));
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((static_cast<std::uint64_t>(h.size()) >> (8 * i)) & 0xff);
  detail::write_all(w.fd, len, 8, tmp);
  detail::write_all(w.fd, h.data(), h.size(), tmp);
  std::vector<detail::fd_guard> fds(files.size());
  std::vector<float> vals;
  std::vector<std::uint16_t> half_bits;
  for (const auto& t : order) {
    std::uint64_t next = 0;  // elements of this parameter written so far
    for (const auto& c : where[t.param]) {
      ZB_REQUIRE(c[0] == next, "checkpoint::export_safetensors: ", (cdir / "manifest.json").string(),
                 " does not cover parameter '", reg[t.param].name, "' from element ", next);
      const fs::path p = cdir / files[c[2]].file;
      if (fds[c[2]].fd < 0) fds[c[2]].fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
      ZB_REQUIRE(fds[c[2]].fd >= 0, "checkpoint::export_safetensors: cannot open ", p.string());
      for (std::uint64_t done = 0; done < c[1];) {
        const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(o.chunk_numel, c[1] - done));
        vals.resize(n);
        detail::read_at(fds[c[2]].fd, vals.data(), n * sizeof(float),
                        c[3] + (static_cast<std::uint64_t>(t.array) * c[1] + done) * sizeof(float), p);
        if (t.array > 0 || o.dtype == "fp32") {
          detail::write_all(w.fd, vals.data(), n * sizeof(float), tmp);
        } else {
          half_bits.resize(n);
          for (std::size_t i = 0; i < n; ++i) {
            if (o.dtype == "bf16") half_bits[i] = std::bit_cast<std::uint16_t>(from_float<bfloat16>(vals[i]));
            else half_bits[i] = std::bit_cast<std::uint16_t>(from_float<half>(vals[i]));
          }
          detail::write_all(w.fd, half_bits.data(), n * 2, tmp);
        }
        done += n;
      }
      next += c[1];
    }
    ZB_REQUIRE(next == reg[t.param].numel, "checkpoint::export_safetensors: ", (cdir / "manifest.json").string(),
               " covers ", next, " of the ", reg[t.param].numel, " elements of parameter '", reg[t.param].name, "'");
  }
  ZB_REQUIRE(::fsync(w.fd) == 0, "checkpoint::export_safetensors: fsync of ", tmp.string(), " failed: ",
             std::strerror(errno));
  fs::rename(tmp, out);
}

/// @brief The running engine's model as one safetensors file `out`, collectively: a
/// checkpoint is saved (every rank writes its part, in parallel) into `out.checkpoint/`,
/// rank 0 streams it into `out` (`export_safetensors`, memory bounded by
/// `o.chunk_numel`), and the temporary checkpoint is removed. Between steps.
template <class Engine>
void save_safetensors(Engine& eng, const std::string& out, const export_options& o = {}) {
  auto& comm = eng.communicator();
  const std::string tmp = out + ".checkpoint";
  save_options so;
  so.name = "export";
  detail::on_every_rank(comm, [&] {
    if (comm.rank() == 0) detail::fs::remove_all(tmp);
  });
  save(eng, tmp, so);
  detail::on_every_rank(comm, [&] {
    if (comm.rank() != 0) return;
    export_safetensors(tmp, so.name, out, o);
    detail::fs::remove_all(tmp);
  });
}

/// @brief Maps an engine parameter's registered name to its tensor name in a
/// safetensors file (identity by default).
using name_map = std::function<std::string(const std::string&)>;

/// @brief Initialise `eng`'s parameters from safetensors file `path` (names through
/// `map`; F32, BF16 or F16 tensors of the registered shapes). The file is memory-mapped
/// and each rank reads only the elements it holds (with stage 3 its own slices). The
/// imported parameters' optimizer state is zero (a fresh start from pretrained weights);
/// the step count, learning rate and loss scale are left as they are. Collective,
/// between steps. Everything is checked on every rank first — the file's header is the
/// same on every rank (size and a hash), every parameter has a tensor of its shape and
/// a known dtype inside the file — and a failure is an error on every rank naming the
/// file and the tensor, with the engine unchanged.
template <class Engine>
void import_safetensors(Engine& eng, const std::string& path, const name_map& map = {}) {
  auto& comm = eng.communicator();
  struct mapping {
    void* base = MAP_FAILED;
    std::size_t bytes = 0;
    ~mapping() {
      if (base != MAP_FAILED) ::munmap(base, bytes);
    }
  } file;
  struct tensor_ref {
    int dtype = 0;  // 0 F32, 1 BF16, 2 F16
    std::uint64_t begin = 0;
  };
  std::vector<tensor_ref> tensors(eng.registry().size());
  std::uint64_t header_hash = 0;
  detail::on_every_rank(comm, [&] {
    detail::fd_guard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    ZB_REQUIRE(fd.fd >= 0, "checkpoint::import_safetensors: cannot open ", path, ": ", std::strerror(errno));
    struct stat st {};
    ZB_REQUIRE(::fstat(fd.fd, &st) == 0 && st.st_size >= 8, "checkpoint::import_safetensors: ", path,
               " is too short for a safetensors file");
    file.bytes = static_cast<std::size_t>(st.st_size);
    file.base = ::mmap(nullptr, file.bytes, PROT_READ, MAP_SHARED, fd.fd, 0);
    ZB_REQUIRE(file.base != MAP_FAILED, "checkpoint::import_safetensors: cannot map ", path, ": ", std::strerror(errno));
    const auto* b = static_cast<const unsigned char*>(file.base);
    const auto h = read_safetensors_header(b, file.bytes, path, "checkpoint::import_safetensors");
    header_hash = XXH3_64bits(b, static_cast<std::size_t>(h.data_start)) ^ file.bytes;
    const auto& reg = eng.registry().params();
    for (std::size_t p = 0; p < reg.size(); ++p) {
      const std::string key = map ? map(reg[p].name) : reg[p].name;
      const auto* t = h.find(key);
      ZB_REQUIRE(t, "checkpoint::import_safetensors: ", path, " has no tensor '", key, "' for parameter ",
                 eng.param_description(p));
      const int code = t->dtype == "F32" ? 0 : t->dtype == "BF16" ? 1 : t->dtype == "F16" ? 2 : -1;
      ZB_REQUIRE(code >= 0, "checkpoint::import_safetensors: ", path, ": tensor '", key, "' is ", t->dtype,
                 "; F32, BF16 or F16 can be imported");
      const std::vector<std::uint64_t> want(reg[p].shape.begin(), reg[p].shape.end());
      ZB_REQUIRE(t->shape == want, "checkpoint::import_safetensors: ", path, ": tensor '", key, "' has shape ",
                 detail::shape_text(t->shape), " but parameter ", eng.param_description(p), " needs ",
                 detail::shape_text(want));
      // read_safetensors_header checked that the tensor's bytes are inside the file and
      // as many as its shape and dtype need: the same shape, so the parameter's.
      tensors[p] = {code, t->begin};
    }
  });
  // The same file on every rank (a path that resolves differently would mix models).
  const auto hashes = comm.all_gather_values({static_cast<double>(header_hash >> 32),
                                               static_cast<double>(header_hash & 0xffffffffu)});
  for (int r = 1; r < comm.size(); ++r)
    ZB_REQUIRE(hashes[2 * r] == hashes[0] && hashes[2 * r + 1] == hashes[1], "checkpoint::import_safetensors: ", path,
               " differs between rank 0 and rank ", r, " (size or header)");
  detail::on_every_rank(comm, [&] {
    ZB_REQUIRE(eng.micro_steps_pending() == 0, "checkpoint::import_safetensors: import between steps");
    const auto* b = static_cast<const unsigned char*>(file.base);
    std::vector<std::vector<float>> arrays(Engine::state_arrays);
    std::vector<const float*> ptrs(Engine::state_arrays);
    for (const auto& s : eng.load_segments()) {
      for (auto& a : arrays) a.assign(s.count, 0.0f);
      const auto& t = tensors[s.param];
      float* v = arrays[0].data();
      for (std::size_t i = 0; i < s.count; ++i) {
        const std::size_t e = s.begin + i;
        if (t.dtype == 0) {
          std::memcpy(v + i, b + t.begin + 4 * e, 4);
        } else {
          std::uint16_t bits;
          std::memcpy(&bits, b + t.begin + 2 * e, 2);
          v[i] = t.dtype == 1 ? static_cast<float>(bfloat16::from_bits(bits)) : static_cast<float>(half::from_bits(bits));
        }
      }
      for (int a = 0; a < Engine::state_arrays; ++a) ptrs[a] = arrays[a].data();
      eng.load_segment(s, ptrs.data());
    }
  });
  eng.state_loaded();
}

}  // namespace checkpoint
ZB_NAMESPACE_END
