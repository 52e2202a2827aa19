# Builds and runs tests/consumer either through FetchContent or through find_package
# after installing zeroblocks into a scratch prefix. Invoked by CTest with -P.
file(REMOVE_RECURSE ${WORK})
file(MAKE_DIRECTORY ${WORK})
set(consumer_src ${SRC}/tests/consumer)
if(MODE STREQUAL "find_package")
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/zb -G ${GENERATOR}
                          -DZEROBLOCKS_BUILD_TESTS=OFF -DZEROBLOCKS_BUILD_BENCH=OFF
                          -DZEROBLOCKS_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_PREFIX=${WORK}/prefix
                  RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "configuring zeroblocks for install failed")
  endif()
  execute_process(COMMAND ${CMAKE_COMMAND} --install ${WORK}/zb RESULT_VARIABLE rc)
  if(rc)
    message(FATAL_ERROR "cmake --install failed")
  endif()
  set(extra -DCMAKE_PREFIX_PATH=${WORK}/prefix)
else()
  set(extra -DZB_SOURCE_DIR=${SRC})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -S ${consumer_src} -B ${WORK}/consumer -G ${GENERATOR}
                        -DZB_CONSUMER_MODE=${MODE} ${extra} RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "configuring the consumer (${MODE}) failed")
endif()
# Pulled in as a subproject, zeroblocks must not probe for CUDA unless asked: the
# consumer's cache has no CMAKE_CUDA_COMPILER entry (check_language would have made one).
if(NOT MODE STREQUAL "find_package")
  file(STRINGS ${WORK}/consumer/CMakeCache.txt cuda_probe REGEX "^CMAKE_CUDA_COMPILER")
  if(cuda_probe)
    message(FATAL_ERROR "the consumer (${MODE}) probed for CUDA without asking for zeroblocks::cuda: ${cuda_probe}")
  endif()
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/consumer RESULT_VARIABLE rc)
if(rc)
  message(FATAL_ERROR "building the consumer (${MODE}) failed")
endif()
find_program(MPIEXEC NAMES mpiexec mpirun REQUIRED)
execute_process(COMMAND ${MPIEXEC} -n 2 ${WORK}/consumer/consumer RESULT_VARIABLE rc
                OUTPUT_VARIABLE out ERROR_VARIABLE err)
message(STATUS "${out}${err}")
if(rc OR NOT out MATCHES "consumer ok")
  message(FATAL_ERROR "the consumer (${MODE}) did not run correctly")
endif()
