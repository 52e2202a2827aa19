# Warnings and sanitizers for zeroblocks' own tests, benches and examples.
add_library(zeroblocks_warnings INTERFACE)
target_compile_options(zeroblocks_warnings INTERFACE -Wall -Wextra -Wpedantic
  $<$<BOOL:${ZEROBLOCKS_WERROR}>:-Werror>)

set(ZEROBLOCKS_SANITIZE "" CACHE STRING "Sanitizers for tests, e.g. address,undefined")
if(ZEROBLOCKS_SANITIZE)
  target_compile_options(zeroblocks_warnings INTERFACE -fsanitize=${ZEROBLOCKS_SANITIZE} -fno-omit-frame-pointer
                         -fno-sanitize-recover=all)
  target_link_options(zeroblocks_warnings INTERFACE -fsanitize=${ZEROBLOCKS_SANITIZE})
endif()
