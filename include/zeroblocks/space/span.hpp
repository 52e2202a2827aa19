/**
 * @file span.hpp
 * @brief `space_span<T, Space>`: a pointer and a length that carry the memory space
 * they point into.
 *
 * What the engine hands out (a unit's full parameters, `unit_guard::param`) is a
 * `space_span`. For a host-accessible space (`host_space`, `pinned_space`) it behaves
 * like `std::span`: indexing, iteration, and an implicit conversion to
 * `std::span<T>`. For device memory (`cuda_space`) it offers only `data()`, `size()`
 * and `subspan()`: reading an element from host code does not compile, so a trainer
 * cannot dereference a device pointer by accident and needs no pointer query to find
 * out where the memory is — the type says it (`space_span<...>::space`).
 */
#pragma once

#include "../core/config.hpp"

#include <cstddef>
#include <span>
#include <type_traits>

ZB_NAMESPACE_BEGIN

/// @brief A view of `size()` elements of type T in memory of `Space`.
template <class T, class Space>
class space_span {
public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using space = Space;
  /// @brief Whether host code may read the elements.
  static constexpr bool host_accessible = Space::host_accessible;

  constexpr space_span() = default;
  constexpr space_span(T* data, std::size_t size) : data_(data), size_(size) {}
  /// @brief A view of const elements from one of mutable elements.
  template <class U>
    requires std::is_same_v<const U, T>
  constexpr space_span(space_span<U, Space> other) : data_(other.data()), size_(other.size()) {}

  constexpr T* data() const { return data_; }
  constexpr std::size_t size() const { return size_; }
  constexpr std::size_t size_bytes() const { return size_ * sizeof(T); }
  constexpr bool empty() const { return size_ == 0; }
  constexpr space_span subspan(std::size_t offset, std::size_t count) const { return {data_ + offset, count}; }

  // Element access: host-accessible spaces only.
  constexpr T& operator[](std::size_t i) const
    requires host_accessible
  {
    return data_[i];
  }
  constexpr T* begin() const
    requires host_accessible
  {
    return data_;
  }
  constexpr T* end() const
    requires host_accessible
  {
    return data_ + size_;
  }
  /// @brief The same view as a `std::span` (host-accessible spaces only).
  constexpr std::span<T> host() const
    requires host_accessible
  {
    return {data_, size_};
  }
  constexpr operator std::span<T>() const
    requires host_accessible
  {
    return host();
  }

private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

ZB_NAMESPACE_END
