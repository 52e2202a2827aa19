/**
 * @file detail/mpi_include.hpp
 * @brief `<mpi.h>` as zeroblocks includes it: MPI's C API only, with the deprecated C++
 *        bindings (and their warnings) kept out.
 */
#pragma once

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
