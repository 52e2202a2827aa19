# Warnings and sanitizers for zeroblocks' own tests, benches and examples.
add_library(zeroblocks_warnings INTERFACE)
target_compile_options(zeroblocks_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic $<$<BOOL:${ZEROBLOCKS_WERROR}>:-Werror>>
  # nvcc: the host compiler's warnings on the host side, nvcc's own for device code.
  # (-Wpedantic stays off there: nvcc's generated host code uses GNU line markers.)
  $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra $<$<BOOL:${ZEROBLOCKS_WERROR}>:-Werror=all-warnings>>)

set(ZEROBLOCKS_SANITIZE "" CACHE STRING "Sanitizers for tests, e.g. address,undefined")
if(ZEROBLOCKS_SANITIZE)
  target_compile_options(zeroblocks_warnings INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${ZEROBLOCKS_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all>)
  target_link_options(zeroblocks_warnings INTERFACE -fsanitize=${ZEROBLOCKS_SANITIZE})
endif()
