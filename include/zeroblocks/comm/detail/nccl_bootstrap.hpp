/**
 * @file detail/nccl_bootstrap.hpp
 * @brief `comm::nccl`'s bootstrap: the NCCL config from our knobs, the unique-id file exchange of the file bootstrap.
 *
 * Part of `comm::nccl` (`comm/nccl.hpp`, whose header comment describes the whole).
 */
#pragma once

#include "nccl_base.hpp"

ZB_NAMESPACE_BEGIN
namespace detail {

/// @brief The NCCL communicator configuration for our knobs.
inline ncclConfig_t nccl_make_config(const comm::nccl_config& cfg) {
  ncclConfig_t c = NCCL_CONFIG_INITIALIZER;
  c.blocking = cfg.blocking ? 1 : 0;
  if (!cfg.name.empty()) {
    // NCCL may keep the pointer for the communicator's life: names are interned for good.
    static std::mutex m;
    static auto* names = new std::set<std::string>();
    std::lock_guard<std::mutex> lock(m);
    c.commName = names->insert(cfg.name).first->c_str();
  }
  return c;
}

/// @brief A 16-hex-digit random token.
inline std::string nccl_nonce() {
  std::random_device rd;
  const std::uint64_t v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                          (static_cast<std::uint64_t>(::getpid()) << 16);
  std::ostringstream os;
  os << std::hex;
  os.width(16);
  os.fill('0');
  os << v;
  return os.str();
}

inline constexpr const char* nccl_id_magic = "zeroblocks-nccl-id";

/// @brief Rank 0's side of the file bootstrap: write, then rename into place (atomic).
inline void nccl_write_id_file(const std::filesystem::path& path, int size, const std::string& nonce,
                               const ncclUniqueId& id) {
  std::filesystem::path tmp = path;
  tmp += concat(".", ::getpid(), ".tmp");
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << nccl_id_magic << " 1 " << size << ' ' << nonce << '\n';
    f.write(id.internal, NCCL_UNIQUE_ID_BYTES);
    f.flush();
    ZB_REQUIRE(f.good(), "comm::nccl: cannot write the NCCL id file '", tmp.string(), "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  ZB_REQUIRE(!ec, "comm::nccl: cannot rename '", tmp.string(), "' to '", path.string(), "': ", ec.message());
}

/// @brief The other ranks' side: poll for the file until `timeout`.
inline std::pair<ncclUniqueId, std::string> nccl_read_id_file(const std::filesystem::path& path, int rank,
                                                               int size, std::chrono::milliseconds timeout) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      std::ifstream f(path, std::ios::binary);
      std::string line;
      std::getline(f, line);
      std::istringstream head(line);
      std::string magic, nonce;
      int version = 0, n = 0;
      head >> magic >> version >> n >> nonce;
      ncclUniqueId id{};
      f.read(id.internal, NCCL_UNIQUE_ID_BYTES);
      ZB_REQUIRE(magic == nccl_id_magic && version == 1 && f.gcount() == NCCL_UNIQUE_ID_BYTES,
                 "comm::nccl: '", path.string(), "' is not a zeroblocks NCCL id file");
      ZB_REQUIRE(n == size, "comm::nccl: rank ", rank, " expects ", size, " ranks but the NCCL id file '",
                 path.string(), "' was written for ", n, " (same name used by another job?)");
      return {id, nonce};
    }
    if (std::chrono::steady_clock::now() - start > timeout)
      ZB_FAIL("comm::nccl: rank ", rank, " timed out after ", std::chrono::duration<double>(timeout).count(),
              " s waiting for the NCCL id file '", path.string(),
              "' that rank 0 writes (is rank 0 running, with the same directory and name?)");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace detail
ZB_NAMESPACE_END
