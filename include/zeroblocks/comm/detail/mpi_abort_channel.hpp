/**
 * @file detail/mpi_abort_channel.hpp
 * @brief The abort protocol's MPI transport (`abort_channel.hpp`): point-to-point
 *        messages on a private duplicate of a communicator, a receive posted at
 *        construction and tested while waiting. Needs `<mpi.h>` (included first by
 *        `comm/mpi.hpp` or `comm/nccl.hpp`).
 *
 * A freed communicator's context id is reused by MPI, so a message sent to an earlier
 * channel could match this one's receive. Every channel therefore agrees on a random
 * 64-bit nonce at construction (rank 0's, broadcast) and prefixes its messages with it;
 * a message with another nonce is dropped and the receive posted again. (This replaces a
 * process-wide generation counter: no hidden static state.)
 */
#pragma once

#include "../../core/config.hpp"
#include "../../core/error.hpp"
#include "abort_channel.hpp"

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>

ZB_NAMESPACE_BEGIN
namespace detail {

class mpi_abort_channel final : public abort_channel {
public:
  mpi_abort_channel(std::string who, MPI_Comm parent) : abort_channel(std::move(who)) {
    check(MPI_Comm_dup(parent, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    if (rank_ == 0) {
      std::random_device rd;
      nonce_ = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
    }
    check(MPI_Bcast(&nonce_, 1, MPI_UINT64_T, 0, comm_), "MPI_Bcast");
    post();
  }
  ~mpi_abort_channel() override {
    if (!mpi_usable() || comm_ == MPI_COMM_NULL) return;
    if (req_ != MPI_REQUEST_NULL) {
      MPI_Cancel(&req_);
      MPI_Wait(&req_, MPI_STATUS_IGNORE);
    }
    for (int flag = 1; flag;) {  // drop messages never received (several peers failed)
      MPI_Status st;
      MPI_Iprobe(MPI_ANY_SOURCE, tag, comm_, &flag, &st);
      if (flag) MPI_Recv(in_.get(), capacity, MPI_CHAR, st.MPI_SOURCE, tag, comm_, MPI_STATUS_IGNORE);
    }
    if (failed()) return;  // sends may still be in flight: leak the communicator, the process ends soon
    MPI_Comm_free(&comm_);
  }

protected:
  void do_send(const std::string& message) override {
    if (!mpi_usable()) return;
    // The sends are freed, not waited for: the buffer must outlive them (leaked).
    char* out = new char[capacity]();
    std::memcpy(out, &nonce_, sizeof nonce_);
    std::strncpy(out + sizeof nonce_, message.c_str(), capacity - sizeof nonce_ - 1);
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request q;
      if (MPI_Isend(out, capacity, MPI_CHAR, r, tag, comm_, &q) == MPI_SUCCESS) MPI_Request_free(&q);
    }
  }
  std::optional<std::string> do_poll() override {
    while (req_ != MPI_REQUEST_NULL && mpi_usable()) {
      int flag = 0;
      MPI_Status st;
      if (MPI_Test(&req_, &flag, &st) != MPI_SUCCESS || !flag) return std::nullopt;
      req_ = MPI_REQUEST_NULL;
      std::uint64_t nonce = 0;
      std::memcpy(&nonce, in_.get(), sizeof nonce);
      if (nonce == nonce_) return concat("rank ", st.MPI_SOURCE, " failed: ", in_.get() + sizeof nonce_);
      post();  // a message for an earlier channel on a reused context: not ours
    }
    return std::nullopt;
  }

private:
  static constexpr int capacity = 1024;
  static constexpr int tag = 7;
  static bool mpi_usable() {
    int fin = 0;
    MPI_Finalized(&fin);
    return !fin;
  }
  static void check(int rc, const char* what) {
    ZB_REQUIRE(rc == MPI_SUCCESS, "abort channel: ", what, " failed (MPI error ", rc, ")");
  }
  void post() {
    in_[capacity - 1] = '\0';
    check(MPI_Irecv(in_.get(), capacity, MPI_CHAR, MPI_ANY_SOURCE, tag, comm_, &req_), "MPI_Irecv");
  }
  MPI_Comm comm_ = MPI_COMM_NULL;
  MPI_Request req_ = MPI_REQUEST_NULL;
  int rank_ = 0;
  int size_ = 1;
  std::uint64_t nonce_ = 0;
  std::unique_ptr<char[]> in_ = std::make_unique<char[]>(capacity);
};

}  // namespace detail
ZB_NAMESPACE_END
