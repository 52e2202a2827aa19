# FindNCCL: locates NCCL's header and library (NCCL ships no CMake package).
#
# Looks in NCCL_ROOT / $ENV{NCCL_HOME} / $ENV{NCCL_ROOT} (the `nvidia/nccl` folder of
# the `nvidia-nccl-cu13` Python wheel works too: include/nccl.h and lib/libnccl.so.2,
# with no unversioned libnccl.so), then next to the CUDA Toolkit
# (the CUDA containers and this project's CI put nccl.h in the toolkit's include dir),
# then the system paths. Defines NCCL_FOUND, NCCL_VERSION, NCCL_INCLUDE_DIR,
# NCCL_LIBRARY and the imported target NCCL::NCCL.
set(_zb_nccl_hints ${NCCL_ROOT} $ENV{NCCL_HOME} $ENV{NCCL_ROOT})
if(CUDAToolkit_LIBRARY_ROOT)
  list(APPEND _zb_nccl_hints ${CUDAToolkit_LIBRARY_ROOT})
endif()
find_path(NCCL_INCLUDE_DIR nccl.h
  HINTS ${_zb_nccl_hints} ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)
find_library(NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
  HINTS ${_zb_nccl_hints} ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu)
if(NCCL_INCLUDE_DIR AND EXISTS "${NCCL_INCLUDE_DIR}/nccl.h")
  file(STRINGS "${NCCL_INCLUDE_DIR}/nccl.h" _zb_nccl_ver REGEX "^#define NCCL_(MAJOR|MINOR|PATCH) +[0-9]+")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "NCCL_${_part} +([0-9]+)" _m "${_zb_nccl_ver}")
    set(_zb_nccl_${_part} "${CMAKE_MATCH_1}")
  endforeach()
  set(NCCL_VERSION "${_zb_nccl_MAJOR}.${_zb_nccl_MINOR}.${_zb_nccl_PATCH}")
endif()
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(NCCL REQUIRED_VARS NCCL_LIBRARY NCCL_INCLUDE_DIR
                                  VERSION_VAR NCCL_VERSION)
if(NCCL_FOUND AND NOT TARGET NCCL::NCCL)
  add_library(NCCL::NCCL UNKNOWN IMPORTED)
  set_target_properties(NCCL::NCCL PROPERTIES
    IMPORTED_LOCATION "${NCCL_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()
mark_as_advanced(NCCL_INCLUDE_DIR NCCL_LIBRARY)
