// master::swapped<Swap> with a type that is not a swap backend must not compile.
#include <zeroblocks/zeroblocks.hpp>

struct not_a_swap {};

int main() {
  using bad = zeroblocks::master::swapped<not_a_swap>;
  return sizeof(bad) > 0 ? 0 : 1;
}
