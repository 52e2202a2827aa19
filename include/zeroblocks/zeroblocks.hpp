/**
 * @file zeroblocks.hpp
 * @brief Everything host-side that needs no outside library: spaces, `comm::self`,
 * layout, policies, engine and presets. `comm::mpi` needs MPI: include
 * `zeroblocks/comm/mpi.hpp` as well.
 */
#pragma once

#include "comm/self.hpp"
#include "engine/presets.hpp"
